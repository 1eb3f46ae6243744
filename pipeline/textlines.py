"""Physical lines of a text input, and CSV/TSV records bounded to the lines they may span.

The list readers (pipeline/readers.py) never hand a file to a parser that
decides on its own how much of the file one record takes.  They split the
decompressed bytes into physical lines here (ended by \\n, \\r\\n or a lone
\\r, the line ends Python's universal newlines know), count every line, and
account for each one as blank, header, or part of exactly one row.  That
count is what lets the audit prove that no line was silently swallowed.

CSV is the one format where a record may span lines (a quoted field holding
newlines).  `DelimitedRecords` lets Python's csv module parse, but feeds it
one physical line at a time and stops a record that keeps a quote open too
long: over `MAX_SPAN_LINES` lines or `MAX_SPAN_CHARS` characters, still open
at the end of the file, or about to take in a line that is itself a record
(e.g. `http://host/5.jpg,caption 5` after an unclosed `"` on the line before).
Such a record costs its first line only (a broken record); parsing resumes at
its second line, so the rows after an unclosed quote are read as rows.
"""
from __future__ import annotations

import collections
import csv
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple

# Longer than any real URL list line, yet bounded: memory per line never exceeds it.
MAX_LINE_BYTES = 32 * 1024 * 1024
# A quoted CSV field may hold a few newlines (a poem, an address), not a file.
MAX_SPAN_LINES = 100
MAX_SPAN_CHARS = 1024 * 1024
_READ_BYTES = 1024 * 1024
_UTF8_BOM = b"\xef\xbb\xbf"
# Split a piece of text after each \r that is not the start of \r\n.
_AFTER_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


class Line(NamedTuple):
    """One physical line, decoded (undecodable bytes kept as lone surrogates) with its line end."""

    text: str
    too_long: bool = False  # over MAX_LINE_BYTES: its text was dropped


@dataclass
class FileTally:
    """What reading one input file found: every physical line is blank, a header, or in exactly one row.

    `physical_records` is the file's own count of records (line formats:
    physical lines that are neither blank nor header; Parquet: its
    metadata's row count; crawls: None, their rows are image links).  The
    rows account for them all when
    `physical_records == rows - multiline_rows + lines_in_multiline_rows`.
    """

    physical_lines: int | None = None  # None: not a line format
    blank_lines: int = 0
    header_lines: int = 0
    physical_records: int | None = None
    rows: int = 0
    multiline_rows: int = 0
    lines_in_multiline_rows: int = 0
    rejected_at_read: collections.Counter = field(default_factory=collections.Counter)

    def count_row(self, error: str | None, lines: int = 1) -> None:
        self.rows += 1
        if lines > 1:
            self.multiline_rows += 1
            self.lines_in_multiline_rows += lines
        if error:
            self.rejected_at_read[error] += 1

    def records_in_rows(self) -> int:
        return self.rows - self.multiline_rows + self.lines_in_multiline_rows

    def summary(self, path: str, fmt: str) -> dict[str, Any]:
        """The audit's entry for the file (audit.json `inputs`)."""
        records = self.physical_records
        if self.physical_lines is not None:
            records = self.physical_lines - self.blank_lines - self.header_lines
        return {
            "path": path,
            "format": fmt,
            "physical_lines": self.physical_lines,
            "blank_lines": self.blank_lines,
            "header_lines": self.header_lines,
            "physical_records": records,
            "rows": self.rows,
            "multiline_rows": self.multiline_rows,
            "lines_in_multiline_rows": self.lines_in_multiline_rows,
            "rejected_at_read": dict(sorted(self.rejected_at_read.items())),
        }


def physical_lines(handle: BinaryIO, tally: FileTally) -> Iterator[Line]:
    """The lines of a binary stream, counted into `tally`; a leading UTF-8 BOM is dropped.

    `handle` must have peek() (an io.BufferedReader), to keep a \\r\\n that
    straddles two reads one line end.
    """
    tally.physical_lines = 0
    first = True
    for raw, too_long in _raw_lines(handle):
        tally.physical_lines += 1
        if first and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
        first = False
        yield Line(raw.decode("utf-8", errors="surrogateescape"), too_long)


def _raw_lines(handle: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    parts: list[bytes] = []
    size, too_long = 0, False
    while True:
        piece = handle.readline(_READ_BYTES)
        if not piece:
            if size:  # the last line, without a line end
                yield b"".join(parts), too_long
            return
        if piece.endswith(b"\r") and handle.peek(1)[:1] == b"\n":
            piece += handle.read(1)
        for segment in _AFTER_LONE_CR.split(piece) if b"\r" in piece else (piece,):
            if not segment:
                continue
            size += len(segment)
            too_long = too_long or size > MAX_LINE_BYTES
            if too_long:
                parts = []  # the rest of the line is skipped, not kept
            else:
                parts.append(segment)
            if segment.endswith((b"\n", b"\r")):
                yield b"".join(parts), too_long
                parts, size, too_long = [], 0, False


class _SpanBroken(Exception):
    """The record being parsed may not take in another line."""


class _LineFeed:
    """The lines csv.reader parses, one at a time; knows which lines the current record took."""

    def __init__(self, lines: Iterator[Line]):
        self._lines = lines
        self._given_back: collections.deque[Line] = collections.deque()
        self.record: list[Line] = []
        self._chars = 0
        self.starts_a_record: Callable[[str], bool] = lambda text: False

    def __iter__(self) -> "_LineFeed":
        return self

    def start_record(self) -> None:
        self.record, self._chars = [], 0

    def __next__(self) -> str:
        continuing = bool(self.record)
        if continuing and (len(self.record) >= MAX_SPAN_LINES or self._chars >= MAX_SPAN_CHARS):
            raise _SpanBroken
        line = self._given_back.popleft() if self._given_back else next(self._lines, None)
        if line is None:
            if continuing:  # a quote still open at the end of the file
                raise _SpanBroken
            raise StopIteration
        self.record.append(line)
        self._chars += len(line.text)
        if line.too_long or (continuing and self.starts_a_record(line.text)):
            raise _SpanBroken
        return line.text

    def break_record(self) -> Line:
        """The broken record's first line; its other lines will be parsed again, from the second."""
        first, *rest = self.record
        self._given_back.extendleft(reversed(rest))
        self.record = [first]
        return first


class Record(NamedTuple):
    fields: list[str] | None  # None: broken, its only line cannot start a readable record
    lines: list[Line]


class DelimitedRecords:
    """The records of a CSV/TSV file (see the module docstring), each with the physical lines it took.

    Set `starts_a_record` once the header is known: it tells whether a line,
    parsed alone, is a whole record (the url column holds a URL).
    """

    def __init__(self, lines: Iterator[Line], delimiter: str):
        self._delimiter = delimiter
        self._feed = _LineFeed(lines)
        csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
        self._reader = csv.reader(self._feed, delimiter=delimiter)

    def set_record_test(self, starts_a_record: Callable[[list[str]], bool]) -> None:
        def test(text: str) -> bool:
            return starts_a_record(next(csv.reader([text], delimiter=self._delimiter), []))

        self._feed.starts_a_record = test

    def __iter__(self) -> "DelimitedRecords":
        return self

    def __next__(self) -> Record:
        self._feed.start_record()
        try:
            fields = next(self._reader)
        except (_SpanBroken, csv.Error):
            return Record(None, [self._feed.break_record()])
        return Record(fields, self._feed.record)
