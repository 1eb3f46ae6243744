"""Streaming readers for the input URL lists: Parquet, CSV, TSV, JSON Lines, plain text,
and web crawls (WARC pages and WAT metadata, see pipeline/ingest/crawl.py).

Files are opened through Beam's `FileSystems`, so local paths, gs://, s3://
and friends all work, and text files compressed with .gz/.bz2/.zst/.xz are
decompressed on the fly (a truncated compressed file is an `InputError`, not
a shorter list).  Every reader streams: Parquet one row group at a time, text
one physical line at a time (pipeline/ingest/textlines.py), so a worker never holds
a whole input file in memory.

Each physical record becomes exactly one `InputRow`, malformed ones included
(they carry an `error` reason instead of being skipped), so the pipeline can
count and reject them: in text formats every physical line is blank, the
header, one row, or one line of a multi-line CSV record (a quoted field
holding newlines, bounded: see pipeline/ingest/textlines.py).  Lines with bytes that
are not UTF-8 are `bad_encoding` rows wherever they are.  `FileTally` counts
all of it for the audit.  Only a file that is not its format at all (binary or
compressed data, UTF-16 text, an unreadable header, no url column, no JSON
object in its first lines) raises `InputError`, before its first row.

`InputRow.extra` holds every other column with JSON-friendly values:
timestamps, dates and times become ISO 8601 strings, decimals become strings
(lossless), durations become seconds, bytes become base64 strings, NaN and
infinities become None, Parquet maps become dicts with string keys and numpy
scalars become Python scalars.  CSV/TSV values stay strings as written.
"""
from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.ingest.crawl_params import CrawlParams, Tally
from pipeline.ingest.input_files import (
    BAD_ENCODING,
    CRAWL_FORMATS,
    FORMATS,
    MALFORMED_ROW,
    MISSING_URL,
    InputError,
    InputRow,
    open_binary,
    reading,
    refuse_non_text,
)
from pipeline.ingest.textlines import DelimitedRecords, FileTally, Line, physical_lines

_DELIMITERS = {"csv": ",", "tsv": "\t"}

_PARQUET_BATCH_ROWS = 1024
# A "JSON Lines" file with this many bad lines before its first object is not one.
_MAX_LEADING_BAD_JSON_LINES = 100
# Undecodable bytes survive text decoding as lone surrogates (errors="surrogateescape").
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# A URL cell, for telling a line that is a whole record: scheme://host or //host.
_URL_START = re.compile(r"\s*(?:[A-Za-z][A-Za-z0-9+.-]*:)?//[^\s/]")

# --------------------------------------------------------------------------- reading


def read_rows(
    path: str,
    fmt: str,
    url_col: str = "url",
    caption_col: str | None = "caption",
    crawl_params: CrawlParams | None = None,
    crawl_tally: Tally | None = None,
    tally: FileTally | None = None,
) -> Iterator[InputRow]:
    """Stream the rows of one input file in file order, counting them (and the physical lines) into `tally`.

    txt: one URL per line, no caption.  warc/wat: one row per image link
    (url_col and caption_col do not apply; `crawl_params` tunes the extraction,
    `crawl_tally` receives the counts of records and links read and dropped,
    see pipeline/ingest/crawl.py).  Other formats: `url_col` must exist (InputError
    before any row is yielded); a missing `caption_col`, or caption_col=None,
    gives None captions; all other columns go to `extra`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
    tally = FileTally() if tally is None else tally
    columns = _Columns(path, url_col, caption_col)
    with reading(path, fmt):
        if fmt in CRAWL_FORMATS:
            from pipeline.ingest import crawl  # only for crawl files: its HTML and WARC machinery is slow to import

            with open_binary(path) as handle:
                rows = crawl.crawl_rows(handle, path, fmt, crawl_params or CrawlParams(), crawl_tally)
                yield from (_counted(row, tally) for row in rows)
        elif fmt == "parquet":
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                yield from _parquet_rows(handle, columns, tally)
        else:
            with open_binary(path) as handle:
                refuse_non_text(handle, path, fmt)
                lines = physical_lines(handle, tally)
                if fmt == "txt":
                    yield from _txt_rows(lines, tally)
                elif fmt == "jsonl":
                    yield from _jsonl_rows(lines, columns, tally)
                else:
                    yield from _delimited_rows(lines, _DELIMITERS[fmt], columns, tally)


def check_input(path: str, fmt: str, url_col: str, caption_col: str | None) -> None:
    """Cheap pre-flight check: the file opens, is its format and has the url column.

    Reads only the start of the file (header or schema and the first row;
    for warc/wat the first record, since the first image link may be far in).
    Raises InputError with a clear message otherwise.  Bad rows further on
    (bad encoding included) are rows to reject, not a reason to refuse the file.
    """
    if fmt in CRAWL_FORMATS:
        from pipeline.ingest import crawl

        with reading(path, fmt), open_binary(path) as handle:
            crawl.check_archive(handle, path)
        return
    rows = read_rows(path, fmt, url_col, caption_col)
    try:
        next(rows, None)
    finally:
        rows.close()


@dataclass(frozen=True)
class _Columns:
    """Which columns hold the url and caption, and how a record becomes an InputRow."""

    path: str
    url: str
    caption: str | None

    def require_url(self, found: Iterable[str]) -> None:
        found = list(found)
        if self.url not in found:
            raise InputError(f"{self.path}: no url column {self.url!r}; columns found: {found}")

    def row(self, record: dict[str, Any]) -> InputRow:
        url, error = _url_value(record.get(self.url))
        caption = _caption_value(record.get(self.caption)) if self.caption is not None else None
        named = (self.url, self.caption)
        extra = {str(name): json_friendly(value) for name, value in record.items() if name not in named}
        return InputRow(url=url, caption=caption, extra=extra, error=error)


def _url_value(value: Any) -> tuple[str | None, str | None]:
    """(url, error reason) for a url cell: stripped text, numbers as text, empty or null missing."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, float) and not math.isfinite(value):
        value = None  # NaN is how pandas-written files spell null
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if value is None:
        return None, MISSING_URL
    if not isinstance(value, str):
        return None, MALFORMED_ROW
    url = value.strip()
    return (url, None) if url else (None, MISSING_URL)


def _caption_value(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    friendly = json_friendly(value)
    return None if friendly is None else json.dumps(friendly, ensure_ascii=False)


def json_friendly(value: Any) -> Any:
    """`value` made of JSON types only (see the module docstring for the conversions)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(key): json_friendly(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_friendly(item) for item in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_friendly(value.tolist())
    return str(value)


def _bad_row(reason: str) -> InputRow:
    return InputRow(url=None, caption=None, extra={}, error=reason)


def _has_undecodable(text: str) -> bool:
    return _UNDECODABLE.search(text) is not None


def _line_error(line: Line) -> str | None:
    """Why a physical line cannot be a row of any text format, or None."""
    if line.too_long:
        return MALFORMED_ROW
    if _has_undecodable(line.text):
        return BAD_ENCODING
    return MALFORMED_ROW if "\x00" in line.text else None


def _counted(row: InputRow, tally: FileTally, lines: int = 1) -> InputRow:
    tally.count_row(row.error, lines)
    return row


def _parquet_rows(handle: BinaryIO, columns: _Columns, tally: FileTally) -> Iterator[InputRow]:
    tally.physical_records = 0
    if not handle.read(1):
        return  # an empty file is an empty list, not a broken Parquet file
    handle.seek(0)
    # pre_buffer (on by default) fetches every row group's pages up front: the whole file.
    parquet = pq.ParquetFile(handle, pre_buffer=False)
    columns.require_url(parquet.schema_arrow.names)
    tally.physical_records = parquet.metadata.num_rows
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for record in batch.to_pylist(maps_as_pydicts="lossy"):
            yield _counted(columns.row(record), tally)


def _is_blank(line: Line) -> bool:
    return not line.too_long and not line.text.strip()


def _txt_rows(lines: Iterable[Line], tally: FileTally) -> Iterator[InputRow]:
    for line in lines:
        if _is_blank(line):
            tally.blank_lines += 1
            continue
        error = _line_error(line)
        yield _counted(_bad_row(error) if error else InputRow(url=line.text.strip(), caption=None), tally)


def _jsonl_rows(lines: Iterable[Line], columns: _Columns, tally: FileTally) -> Iterator[InputRow]:
    # The url column is checked on the first object; bad lines before it are held back until then.
    held_back: list[InputRow] | None = []  # None once the first object was seen
    for line in lines:
        if _is_blank(line):
            tally.blank_lines += 1
            continue
        error = _line_error(line)
        record = None if error else _json_object(line.text)
        bad = _bad_row(error or MALFORMED_ROW) if record is None else None
        if held_back is not None:
            if bad is not None:
                _reject_non_jsonl(columns.path, line.text, held_back)
                held_back.append(bad)
                continue
            columns.require_url(record)
            yield from (_counted(row, tally) for row in held_back)
            held_back = None
        yield _counted(bad or columns.row(record), tally)
    yield from (_counted(row, tally) for row in held_back or ())


def _json_object(text: str) -> dict[str, Any] | None:
    """The line's JSON object, or None when it is not one."""
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        return None
    return record if isinstance(record, dict) else None


def _reject_non_jsonl(path: str, text: str, held_back: list[InputRow]) -> None:
    if not held_back and text.lstrip().startswith("["):
        raise InputError(f"{path}: starts with a JSON array, expected JSON Lines (one JSON object per line)")
    if len(held_back) >= _MAX_LEADING_BAD_JSON_LINES:
        raise InputError(
            f"{path}: no JSON object in the first {len(held_back) + 1} lines; expected JSON Lines "
            f"(one JSON object per line)"
        )


def _delimited_rows(lines: Iterator[Line], delimiter: str, columns: _Columns, tally: FileTally) -> Iterator[InputRow]:
    records = DelimitedRecords(lines, delimiter)
    header = _header(records, columns, tally)
    if header is None:
        return  # empty file
    url_index = header.index(columns.url)
    records.set_record_test(
        lambda fields: len(fields) == len(header) and _URL_START.match(fields[url_index]) is not None
    )
    for fields, record_lines in records:
        if fields is not None and len(record_lines) == 1 and _is_blank(record_lines[0]):
            tally.blank_lines += 1
        else:
            yield _counted(_delimited_row(fields, record_lines, header, columns), tally, len(record_lines))


def _header(records: DelimitedRecords, columns: _Columns, tally: FileTally) -> list[str] | None:
    """The first non-blank record, which must name the url column; None for a file with no records."""
    for fields, record_lines in records:
        if fields is not None and len(record_lines) == 1 and _is_blank(record_lines[0]):
            tally.blank_lines += 1
            continue
        if fields is None:
            raise InputError(f"{columns.path}: unreadable header line (an unclosed quote, or over 32 MiB)")
        if any(_has_undecodable(name) for name in fields):
            raise InputError(f"{columns.path}: header line is not UTF-8 text; re-encode the file as UTF-8")
        if any("\x00" in name for name in fields):
            raise InputError(f"{columns.path}: header line holds NUL bytes (UTF-16 text?); expected UTF-8 text")
        columns.require_url(fields)
        tally.header_lines += len(record_lines)
        return fields
    return None


def _delimited_row(fields: list[str] | None, lines: list[Line], header: list[str], columns: _Columns) -> InputRow:
    # The lines' text is the fields' (quotes and delimiters are ASCII): checking it checks every field.
    text = lines[0].text if len(lines) == 1 else "".join(line.text for line in lines)
    if fields is None or len(fields) != len(header) or "\x00" in text:
        return _bad_row(MALFORMED_ROW)
    if _has_undecodable(text):
        return _bad_row(BAD_ENCODING)
    return columns.row(dict(zip(header, fields)))
