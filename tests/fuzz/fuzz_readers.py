"""Coverage-guided fuzzing of the text list readers (CSV, TSV, JSON Lines, txt) with atheris.

Each input is a format choice, a compression choice and file bytes.  The
invariants checked on every input:

* reading ends, with rows or with the documented `InputError` (a file that
  is not its format at all); never any other exception;
* every physical line is blank, header, or in exactly one row:
  `physical_records == rows - multiline_rows + lines_in_multiline_rows`, and
  the reader's count of physical lines is `bytes.splitlines()`'s (an
  independent count);
* every row is either good (a non-empty url) or carries a known reason;
* reading the same file twice gives the same rows.

The bounds on lines and multi-line records are chosen by the input, small
enough for short inputs to reach them.  Run it longer with, e.g. (see docs/fuzzing.md):

    PYTHONPATH=. python tests/fuzz/fuzz_readers.py -max_total_time=600 -rss_limit_mb=4096 \
        /tmp/reader-corpus tests/fuzz/corpus
"""
from __future__ import annotations

import gzip
import os
import sys
import tempfile

import atheris
import pyarrow.parquet  # noqa: F401  (imported uninstrumented: large, and not what is fuzzed)
from apache_beam.io.filesystems import FileSystems  # noqa: F401

with atheris.instrument_imports(include=["pipeline.ingest.readers", "pipeline.ingest.textlines"]):
    from pipeline.ingest import input_files, readers, textlines

FORMATS = ("csv", "tsv", "jsonl", "txt")
HEAD_BYTES = 6
REASONS = {input_files.MISSING_URL, input_files.MALFORMED_ROW, input_files.BAD_ENCODING}
_WORK_DIR = tempfile.mkdtemp(prefix="fuzz-readers-")


def use_bounds(head: bytes) -> None:
    """Bounds small enough for short inputs to reach, chosen by the input (so a crash replays exactly)."""
    textlines.MAX_SPAN_LINES = 1 + head[2] % 8
    textlines.MAX_SPAN_CHARS = 16 + head[2] * 8
    textlines._READ_BYTES = 1 + head[3] * 4
    textlines.MAX_LINE_BYTES = 8 + int.from_bytes(head[4:6], "little") % 5000


def read(path: str, fmt: str) -> tuple[list[input_files.InputRow], textlines.FileTally] | None:
    tally = textlines.FileTally()
    try:
        return list(readers.read_rows(path, fmt, tally=tally)), tally
    except input_files.InputError:
        return None


def check(data: bytes) -> None:
    # Byte 0: the format; byte 1: gzip or not; bytes 2-5: the bounds; the rest: the file's content.
    head, content = data[:HEAD_BYTES].ljust(HEAD_BYTES, b"\0"), data[HEAD_BYTES:]
    fmt, compressed = FORMATS[head[0] % len(FORMATS)], bool(head[1] & 1)
    use_bounds(head)
    path = os.path.join(_WORK_DIR, f"input.{fmt}{'.gz' if compressed else ''}")
    with open(path, "wb") as handle:
        handle.write(gzip.compress(content, mtime=0) if compressed else content)

    result = read(path, fmt)
    assert read(path, fmt) == result, "two reads of one file differ"
    if result is None:
        return  # InputError: the documented refusal of a file that is not its format
    rows, tally = result
    summary = tally.summary(path, fmt)
    assert summary["rows"] == len(rows)
    # splitlines() cuts at \n, \r\n and a lone \r, the reader's line ends; a BOM is no text.
    assert summary["physical_lines"] == len(content.removeprefix(b"\xef\xbb\xbf").splitlines()), (summary, content)
    assert summary["physical_records"] == tally.records_in_rows(), summary
    for row in rows:
        assert row.error in REASONS if row.error else row.url, row


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
