"""Physical lines of a text input, and CSV/TSV records bounded to the lines they may span.

The list readers (pipeline/ingest/readers.py) never hand a file to a parser that
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
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple

# Longer than any real URL list line, yet bounded: memory per line never exceeds it.
MAX_LINE_BYTES = 32 * 1024 * 1024
# A quoted CSV field may hold a few newlines (a poem, an address), not a file.
MAX_SPAN_LINES = 100
MAX_SPAN_CHARS = 1024 * 1024
_READ_BYTES = 256 * 1024
_UTF8_BOM = b"\xef\xbb\xbf"


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

    bytes.splitlines cuts at exactly the line ends counted here (\n, \r\n
    and a lone \r).  A line longer than MAX_LINE_BYTES comes out as one
    `too_long` Line, its bytes dropped as they are read.
    """
    tally.physical_lines = 0
    pending = b""  # the start of a line whose end is not read yet
    skipping = False  # the pending line is over MAX_LINE_BYTES: its bytes are dropped
    block = handle.read(_READ_BYTES)
    if block.startswith(_UTF8_BOM):
        block = block[len(_UTF8_BOM) :]
    while block:
        lines = (pending + block).splitlines(keepends=True)
        # The last piece may continue in the next block (a lone \r may be half of a \r\n).
        pending = b"" if lines[-1].endswith(b"\n") else lines.pop()
        for raw in lines:
            tally.physical_lines += 1
            yield _line(raw, skipping)
            skipping = False
        if len(pending) > MAX_LINE_BYTES:
            # Drop the bytes, not a lone \r at their end: it may end the line (found by tests/fuzz).
            pending, skipping = pending[-1:] if pending.endswith(b"\r") else b"", True
        block = handle.read(_READ_BYTES)
    if pending or skipping:  # the last line, without a line end
        tally.physical_lines += 1
        yield _line(pending, skipping)


def _line(raw: bytes, skipped: bool) -> Line:
    if skipped or len(raw) > MAX_LINE_BYTES:
        return Line("", too_long=True)
    return Line(raw.decode("utf-8", errors="surrogateescape"))


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

    Call `set_record_test` once the header is known: it tells whether a
    line's fields, parsed alone, are a whole record (the url column holds a URL).
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
