"""Input files: which files a pattern names, their format, and their bytes.

Shared by the list readers (pipeline/ingest/readers.py) and the crawl readers
(pipeline/ingest/crawl.py): the row record both produce, the reasons a row is
malformed, listing a path, directory or glob on any Beam filesystem, telling
the format from the name, and opening a file with on-the-fly decompression
that notices a truncated compressed stream.
"""
from __future__ import annotations

import contextlib
import io
import lzma
import os
import posixpath
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

import pyarrow as pa
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

FORMATS = ("parquet", "csv", "tsv", "jsonl", "txt", "warc", "wat")
# Crawl files hold pages, not rows: each image link on a page becomes a row (pipeline/ingest/crawl.py).
CRAWL_FORMATS = ("warc", "wat")

# Row error reasons.
MISSING_URL = "missing_url"
# Bad JSON line, wrong CSV column count, unclosed CSV quote, a NUL byte, a line over 32 MiB.
MALFORMED_ROW = "malformed_row"
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
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".zstd", ".xz", ".lzma", ".deflate")
_GLOB_CHARS = ("*", "?", "[")

# What a text input must not start with: it is some other kind of file (or compressed without saying so).
_NOT_TEXT_SIGNATURES = (
    (b"\x1f\x8b", "gzip-compressed data (name it *.gz)"),
    (b"BZh", "bzip2-compressed data (name it *.bz2)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data (name it *.zst)"),
    (b"\xfd7zXZ\x00", "xz-compressed data (name it *.xz)"),
    (b"PK\x03\x04", "a zip archive"),
    (b"PAR1", "a Parquet file"),
    (b"\xff\xfe", "UTF-16 or UTF-32 text, not UTF-8 (re-encode it as UTF-8)"),
    (b"\xfe\xff", "UTF-16 text, not UTF-8 (re-encode it as UTF-8)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
)
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
    compressed = name.endswith(COMPRESSION_SUFFIXES)
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


@contextlib.contextmanager
def reading(path: str, fmt: str) -> Iterator[None]:
    try:
        yield
    except _READ_ERRORS as error:
        raise InputError(f"{path}: cannot read as {fmt}: {error}") from error


def refuse_non_text(handle: io.BufferedReader, path: str, fmt: str) -> None:
    start = handle.peek(8)[:8]
    for signature, kind in _NOT_TEXT_SIGNATURES:
        if start.startswith(signature):
            raise InputError(f"{path}: starts like {kind}, not {fmt} text")


def open_binary(path: str) -> io.BufferedReader:
    """The file's bytes, decompressed by extension; a truncated compressed file raises EOFError at its end."""
    handle = FileSystems.open(path)
    if not isinstance(handle, io.BufferedReader):  # Beam's CompressedFile lacks the io interface
        handle = io.BufferedReader(_RawReader(handle))
    return handle


class _RawReader(io.RawIOBase):
    """Adapts Beam's CompressedFile (it only has read()) to the io stack.

    It also notices truncated compressed files, which Beam reads silently up
    to where they were cut, losing the rest of the rows (all of them when the
    cut comes before the end of the first bzip2 or zstd block).
    """

    def __init__(self, handle: BinaryIO):
        super().__init__()
        self._handle = handle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(len(buffer))
        if not data and not self._stream_complete():
            raise EOFError("the compressed stream ends early (truncated file?)")
        buffer[: len(data)] = data
        return len(data)

    def _stream_complete(self) -> bool:
        # Private Beam state, so checked defensively: every decompressor Beam
        # uses (zlib, bz2, lzma, zstandard) has `eof`, True once the stream's end marker was read.
        decompressor = getattr(self._handle, "_decompressor", None)
        compressed = getattr(self._handle, "_file", None)
        if compressed is not None and compressed.tell() == 0:
            return True  # an empty file: an empty list, not a truncated stream
        return getattr(decompressor, "eof", True)

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()
