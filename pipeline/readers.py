"""Streaming readers for the input URL lists: Parquet, CSV, TSV, JSON Lines, plain text,
and web crawls (WARC pages and WAT metadata, see pipeline/crawl.py).

Files are opened through Beam's `FileSystems`, so local paths, gs://, s3://
and friends all work, and text files compressed with .gz/.bz2/.zst/.xz are
decompressed on the fly.  Every reader streams: Parquet one row group at a
time, text one line (CSV: one record) at a time, so a worker never holds a
whole input file in memory.

Each input row becomes exactly one `InputRow`, malformed ones included (they
carry an `error` reason instead of being skipped), so the pipeline can count
and reject them.  Blank lines are not rows.  A whole input that cannot be read
raises `InputError`.

`InputRow.extra` holds every other column with JSON-friendly values:
timestamps, dates and times become ISO 8601 strings, decimals become strings
(lossless), durations become seconds, bytes become base64 strings, NaN and
infinities become None, Parquet maps become dicts with string keys and numpy
scalars become Python scalars.  CSV/TSV values stay strings as written.
"""
from __future__ import annotations

import base64
import codecs
import contextlib
import csv
import datetime
import decimal
import io
import json
import lzma
import math
import os
import posixpath
import re
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

if TYPE_CHECKING:
    from pipeline.crawl import CrawlParams, Tally

FORMATS = ("parquet", "csv", "tsv", "jsonl", "txt", "warc", "wat")
# Crawl files hold pages, not rows: each image link on a page becomes a row (pipeline/crawl.py).
CRAWL_FORMATS = ("warc", "wat")

# Row error reasons.
MISSING_URL = "missing_url"
MALFORMED_ROW = "malformed_row"  # bad JSON line, wrong CSV column count, unparsable CSV record
BAD_ENCODING = "bad_encoding"  # the row's bytes are not valid UTF-8

_EXTENSION_FORMATS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
    ".warc": "warc",  # Common Crawl: *.warc.gz
    ".wat": "wat",  # Common Crawl: *.warc.wat.gz
}
# The suffixes Beam's CompressionTypes.AUTO decompresses.
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".zstd", ".xz", ".lzma", ".deflate")
_GLOB_CHARS = ("*", "?", "[")
_DELIMITERS = {"csv": ",", "tsv": "\t"}

# Longer than any real URL or caption, yet bounded: an unbalanced quote makes
# the csv module swallow the rest of the file into one field, and this limit
# turns that into one malformed row instead of unbounded memory.
_MAX_CSV_FIELD_CHARS = 32 * 1024 * 1024
_PARQUET_BATCH_ROWS = 1024
# A "JSON Lines" file with this many bad lines before its first object is not one.
_MAX_LEADING_BAD_JSON_LINES = 100
_ENCODING_CHECK_BYTES = 64 * 1024
# Undecodable bytes survive text decoding as lone surrogates (errors="surrogateescape").
_UNDECODABLE = re.compile("[\udc80-\udcff]")

# Errors from the filesystem, decompressors and pyarrow that mean "this file is unreadable".
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    pa.ArrowException,
)
try:
    import zstandard

    _READ_ERRORS += (zstandard.ZstdError,)
except ImportError:  # Beam only needs zstandard for .zst inputs
    pass


@dataclass
class InputRow:
    """One row of an input list.  `error` is set (and url may be None) when the row is malformed."""

    url: str | None
    caption: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class InputError(Exception):
    """A whole input that cannot be read; the message names the file and what is wrong."""


# --------------------------------------------------------------------------- listing


def expand_inputs(pattern: str) -> list[str]:
    """Sorted files for a file path, a directory (its files of known formats, non-recursive) or a glob.

    Works on any Beam filesystem.  A glob keeps every matching file, whatever
    its extension, so that files without one can be read with an explicit
    format.  Raises InputError when nothing matches.
    """
    if any(char in pattern for char in _GLOB_CHARS):
        paths = _match(pattern)
    else:
        paths = [] if _names_a_directory(pattern) else _match(pattern)
        if not paths:  # object stores have no directories, only prefixes
            directory_files = _match(FileSystems.join(pattern, "*"))
            paths = [path for path in directory_files if _known_format(path)]
    if not paths:
        raise InputError(f"no input files match {pattern!r}")
    return sorted(set(paths))


def _match(pattern: str) -> list[str]:
    try:
        results = FileSystems.match([pattern])
    except (BeamIOError, ValueError) as error:  # ValueError: no filesystem for the scheme
        raise InputError(f"cannot list {pattern!r}: {error}") from error
    return [metadata.path for result in results for metadata in result.metadata_list]


def _names_a_directory(pattern: str) -> bool:
    is_local = FileSystems.get_scheme(pattern) is None
    return pattern.endswith("/") or (is_local and os.path.isdir(pattern))


def _known_format(path: str) -> bool:
    try:
        detect_format(path)
    except InputError:
        return False
    return True


def detect_format(path: str, override: str | None = None) -> str:
    """The input format: `override` if given, else from the extension (ignoring a compression suffix)."""
    if override is not None:
        fmt = override.lower()
        if fmt not in FORMATS:
            raise InputError(f"unknown input format {override!r}; expected one of {', '.join(FORMATS)}")
        return fmt
    name = path.lower()
    compressed = name.endswith(_COMPRESSION_SUFFIXES)
    if compressed:
        name = posixpath.splitext(name)[0]
    fmt = _EXTENSION_FORMATS.get(posixpath.splitext(name)[1])
    if fmt is None:
        known = ", ".join(sorted(_EXTENSION_FORMATS))
        raise InputError(
            f"{path}: cannot tell the input format from the file name (known extensions: {known}); "
            f"pass the format explicitly (one of {', '.join(FORMATS)})"
        )
    if fmt == "parquet" and compressed:
        raise InputError(f"{path}: compressed Parquet files are not supported (Parquet compresses its own pages)")
    return fmt


# --------------------------------------------------------------------------- reading


def read_rows(
    path: str,
    fmt: str,
    url_col: str = "url",
    caption_col: str | None = "caption",
    crawl_params: CrawlParams | None = None,
    crawl_tally: Tally | None = None,
) -> Iterator[InputRow]:
    """Stream the rows of one input file in file order.

    txt: one URL per line, no caption.  warc/wat: one row per image link
    (url_col and caption_col do not apply; `crawl_params` tunes the extraction,
    `crawl_tally` receives the counts of records and links read and dropped,
    see pipeline/crawl.py).  Other formats: `url_col` must exist (InputError
    before any row is yielded); a missing `caption_col`, or caption_col=None,
    gives None captions; all other columns go to `extra`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
    columns = _Columns(path, url_col, caption_col)
    with _reading(path, fmt):
        if fmt in CRAWL_FORMATS:
            from pipeline import crawl  # crawl imports this module

            with open_binary(path) as handle:
                yield from crawl.crawl_rows(handle, path, fmt, crawl_params or crawl.CrawlParams(), crawl_tally)
        elif fmt == "parquet":
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                yield from _parquet_rows(handle, columns)
        else:
            with _open_text(path, newline="" if fmt in _DELIMITERS else None) as text:
                if fmt == "txt":
                    yield from _txt_rows(text)
                elif fmt == "jsonl":
                    yield from _jsonl_rows(text, columns)
                else:
                    yield from _delimited_rows(text, _DELIMITERS[fmt], columns)


def check_input(path: str, fmt: str, url_col: str, caption_col: str | None) -> None:
    """Cheap pre-flight check: the file opens, decodes as UTF-8 and has the url column.

    Reads only the start of the file (header or schema and the first row;
    for warc/wat the first record, since the first image link may be far in).
    Raises InputError with a clear message otherwise.
    """
    if fmt in CRAWL_FORMATS:
        from pipeline import crawl  # crawl imports this module

        with _reading(path, fmt), open_binary(path) as handle:
            crawl.check_archive(handle, path)
        return
    if fmt != "parquet":
        _check_utf8(path, fmt)
    rows = read_rows(path, fmt, url_col, caption_col)
    try:
        next(rows, None)
    finally:
        rows.close()


@contextlib.contextmanager
def _reading(path: str, fmt: str) -> Iterator[None]:
    try:
        yield
    except _READ_ERRORS as error:
        raise InputError(f"{path}: cannot read as {fmt}: {error}") from error


def _check_utf8(path: str, fmt: str) -> None:
    with _reading(path, fmt), FileSystems.open(path) as handle:
        start = handle.read(_ENCODING_CHECK_BYTES)
    try:
        # Not final: the sample may end in the middle of a multi-byte character.
        codecs.getincrementaldecoder("utf-8")().decode(start, final=False)
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path}: not UTF-8 text (byte 0x{start[error.start]:02x} at offset {error.start} "
            f"of the decompressed content); re-encode it as UTF-8"
        ) from error


def open_binary(path: str) -> BinaryIO:
    """The file's bytes, decompressed by extension; a truncated compressed file raises EOFError at its end."""
    handle = FileSystems.open(path)
    if not isinstance(handle, io.IOBase):  # Beam's CompressedFile lacks the io interface
        handle = io.BufferedReader(_RawReader(handle))
    return handle


def _open_text(path: str, newline: str | None) -> io.TextIOWrapper:
    handle = open_binary(path)
    # utf-8-sig drops a leading BOM; surrogateescape keeps bad bytes so the row
    # holding them can be rejected alone instead of failing the whole file.
    return io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape", newline=newline)


class _RawReader(io.RawIOBase):
    """Adapts Beam's CompressedFile (it only has read()) to the io stack, so TextIOWrapper can decode it.

    It also notices truncated compressed files, which Beam reads silently up
    to where they were cut, losing the rest of the rows.
    """

    def __init__(self, handle: BinaryIO):
        super().__init__()
        self._handle = handle
        self._returned_data = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(len(buffer))
        if data:
            self._returned_data = True
        elif self._returned_data and not self._stream_complete():
            raise EOFError("the compressed stream ends early (truncated file?)")
        buffer[: len(data)] = data
        return len(data)

    def _stream_complete(self) -> bool:
        # Private Beam state, so checked defensively: every decompressor Beam
        # uses (zlib, bz2, lzma, zstandard) has `eof`, True once the stream's end marker was read.
        decompressor = getattr(self._handle, "_decompressor", None)
        return getattr(decompressor, "eof", True)

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()


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


def _parquet_rows(handle: BinaryIO, columns: _Columns) -> Iterator[InputRow]:
    if not handle.read(1):
        return  # an empty file is an empty list, not a broken Parquet file
    handle.seek(0)
    # pre_buffer (on by default) fetches every row group's pages up front: the whole file.
    parquet = pq.ParquetFile(handle, pre_buffer=False)
    columns.require_url(parquet.schema_arrow.names)
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for record in batch.to_pylist(maps_as_pydicts="lossy"):
            yield columns.row(record)


def _txt_rows(text: Iterable[str]) -> Iterator[InputRow]:
    for line in text:
        url = line.strip()
        if not url:
            continue
        yield _bad_row(BAD_ENCODING) if _has_undecodable(url) else InputRow(url=url, caption=None)


def _jsonl_rows(text: Iterable[str], columns: _Columns) -> Iterator[InputRow]:
    lines = (line for line in text if line.strip())
    # The url column is checked on the first object; bad lines before it are held back until then.
    held_back: list[InputRow] = []
    for line in lines:
        record = _json_object(line)
        if record is None:
            _reject_non_jsonl(columns.path, line, held_back)
            held_back.append(_bad_row(BAD_ENCODING if _has_undecodable(line) else MALFORMED_ROW))
            continue
        columns.require_url(record)
        yield from held_back
        yield columns.row(record)
        break
    else:
        yield from held_back
        return
    for line in lines:
        record = _json_object(line)
        if record is not None:
            yield columns.row(record)
        else:
            yield _bad_row(BAD_ENCODING if _has_undecodable(line) else MALFORMED_ROW)


def _json_object(line: str) -> dict[str, Any] | None:
    """The line's JSON object, or None when it is not one (or holds undecodable bytes)."""
    if _has_undecodable(line):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _reject_non_jsonl(path: str, line: str, held_back: list[InputRow]) -> None:
    if not held_back and line.lstrip().startswith("["):
        raise InputError(f"{path}: starts with a JSON array, expected JSON Lines (one JSON object per line)")
    if len(held_back) >= _MAX_LEADING_BAD_JSON_LINES:
        raise InputError(
            f"{path}: no JSON object in the first {len(held_back) + 1} lines; expected JSON Lines "
            f"(one JSON object per line)"
        )


def _delimited_rows(text: Iterable[str], delimiter: str, columns: _Columns) -> Iterator[InputRow]:
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_CSV_FIELD_CHARS))
    records = _csv_records(csv.reader(text, delimiter=delimiter))
    header = next(records, None)
    if header is None:
        return  # empty file
    if not isinstance(header, list) or any(_has_undecodable(name) for name in header):
        raise InputError(f"{columns.path}: unreadable header line")
    columns.require_url(header)
    for fields in records:
        if not isinstance(fields, list) or len(fields) != len(header):
            yield _bad_row(MALFORMED_ROW)
        elif any(_has_undecodable(value) for value in fields):
            yield _bad_row(BAD_ENCODING)
        else:
            yield columns.row(dict(zip(header, fields)))


def _csv_records(reader: Iterator[list[str]]) -> Iterator[list[str] | csv.Error]:
    """The reader's non-blank records; a record the csv module cannot parse comes out as its error.

    After an error the reader resumes at the next line, so one bad record
    (e.g. a field over the size limit) costs one row, not the file.
    """
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield error
            continue
        if fields:  # blank lines are not records
            yield fields

