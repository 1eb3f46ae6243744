"""Coverage-guided fuzzing of the WARC/WAT reader (pipeline/ingest/crawl.py) with atheris.

    python tests/fuzz/fuzz_crawl.py --seeds CORPUS_DIR          # write the seed corpus
    python tests/fuzz/fuzz_crawl.py CORPUS_DIR -max_total_time=60  # fuzz (libFuzzer options)

Each input is read as an uncompressed WARC file and as a WAT file.  The first
byte chooses how the rest is used: even, the bytes are the archive itself
(the seeds are real archives, which the fuzzer then mutates); odd, they are
an HTML page and a WAT JSON body, written into a well-formed archive, so the
HTML parser and the JSON reader are reached without the fuzzer having to
learn the WARC framing first.

Invariants (a failure raises, and atheris saves the input):
* the only exception is InputError (a file that is not a WARC/WAT, or ends
  inside a record), the documented error of crawl_rows;
* every record is accounted for: the Tally counts as many records as warcio
  reads from the same bytes, each with one outcome (page, not_page, malformed);
* every image link is accounted for: links == rows + the counted drops, and
  the rows yielded are exactly the counted rows plus one error row per
  malformed WAT record;
* every row is an absolute http(s) URL without fragment, with a caption that
  is valid UTF-8 text or None, and a language that is None or a primary subtag
  of its tag.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["pipeline", "warcio"]):
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from pipeline.ingest.crawl import CrawlParams, Tally, crawl_rows
    from pipeline.ingest.input_files import InputError

PARAMS = CrawlParams(surrounding_words=3, title_fallback=True)


class InvariantBroken(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantBroken(message)


def archive_of(data: bytes) -> bytes:
    """The archive bytes an input stands for (see the module docstring)."""
    if not data or data[0] % 2 == 0:
        return data[1:]
    provider = atheris.FuzzedDataProvider(data[1:])
    url = provider.ConsumeUnicodeNoSurrogates(40) or "http://fuzz.test/"
    header = provider.ConsumeUnicodeNoSurrogates(20)
    html = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 4096))
    wat_json = provider.ConsumeBytes(provider.remaining_bytes())
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=False)
    http = StatusAndHeaders("200 OK", [("Content-Type", "text/html"), ("Content-Language", header)], protocol="HTTP/1.1")
    try:
        writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(html), http_headers=http))
        writer.write_record(
            writer.create_warc_record(url, "metadata", payload=io.BytesIO(wat_json), warc_content_type="application/json")
        )
    except (ValueError, UnicodeError):  # warcio refuses some header values: nothing to read then
        return b""
    return out.getvalue()


def records_warcio_reads(archive: bytes) -> int:
    count = 0
    for record in ArchiveIterator(io.BytesIO(archive)):
        record.raw_stream.read()
        count += 1
    return count


def check_file(archive: bytes, fmt: str) -> None:
    tally = Tally()
    try:
        rows = list(crawl_rows(io.BytesIO(archive), "fuzz-input", fmt, PARAMS, tally))
    except InputError:
        return  # the documented error: not a WARC/WAT file, or one that ends inside a record
    try:
        expected_records = records_warcio_reads(archive)
    except (ArchiveLoadFailed, EOFError, ValueError):
        expected_records = None  # warcio alone fails where crawl_rows read to the end: compare the tally only
    outcomes = sum(n for name, n in tally.items() if name.startswith("record/"))
    check(tally["records"] == outcomes, f"records {tally['records']} != outcomes {outcomes}")
    check(expected_records in (None, tally["records"]), f"warcio reads {expected_records} records, tally {tally['records']}")
    drops = sum(n for name, n in tally.items() if name.startswith("link/"))
    check(tally["links"] == tally["rows"] + drops, f"links {tally['links']} != rows {tally['rows']} + drops {drops}")
    errors = [row for row in rows if row.error is not None]
    check(len(errors) == tally["record/malformed"], "one error row per malformed record")
    check(len(rows) - len(errors) == tally["rows"], f"{len(rows) - len(errors)} rows yielded, {tally['rows']} counted")
    for row in rows:
        if row.error is None:
            check_row(row)


def check_row(row) -> None:
    check(row.url.startswith(("http://", "https://")) and "#" not in row.url, f"not an image URL: {row.url!r}")
    if row.caption is not None:
        row.caption.encode("utf-8")  # raises on a lone surrogate
    lang, tag = row.extra["page_lang"], row.extra["page_lang_tag"]
    check((lang is None) == (tag is None), "page_lang and page_lang_tag go together")
    check(lang is None or tag.lower().startswith(lang), f"{lang!r} is not the language of {tag!r}")


def test_one_input(data: bytes) -> None:
    archive = archive_of(data)
    check_file(archive, "warc")
    check_file(archive, "wat")


def main() -> None:
    if sys.argv[1:2] == ["--seeds"]:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from tests.crawl_files import write_fuzz_seeds

        write_fuzz_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
