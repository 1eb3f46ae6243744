"""Image links from web crawls: WARC files (HTML pages) and WAT files (link metadata).

Common Crawl publishes every crawl as WARC files (`*.warc.gz`, the pages
themselves) and WAT files (`*.warc.wat.gz`, JSON metadata extracted from the
same pages, including every `<img src alt title>` as a link with path
`IMG@/src`).  Both become one `InputRow` per image link, by the same rules
(pipeline/ingest/crawl_links.py), so a page gives the same rows from either file:

    url      absolute http(s) URL of the image, resolved as a browser does (WHATWG URL
             parsing against the page's first <base href>, else the page URL), #fragment dropped
    caption  the alt text, whitespace collapsed; "" for alt="", None without alt.  With
             `crawl.title_fallback` (off by default, as in cc2dataset and LAION), an image
             whose alt is missing or blank gets its title attribute instead: many sites put
             the description there, but a title is also often a tooltip ("Click to enlarge").
    extra    page_url          the crawled page (WARC-Target-URI)
             page_lang         the page's declared language, its primary subtag ("de"): <html lang>,
                               else <html xml:lang>, else <meta http-equiv=content-language>, else the
                               HTTP Content-Language header (WAT files give <html lang> as a Meta
                               named "HTML@/lang", written by Common Crawl since December 2024);
                               values that are not one BCP 47 tag are skipped; None if none is
             page_lang_tag     the same tag whole, in its standard form ("de-DE"), or None
             surrounding_text  only when CrawlParams.surrounding_words > 0: up to that many words of
                               page text before and after the image (WARC only; None for WAT, which
                               holds no page text)

Skipped, and counted in the file's `Tally`: <img> without src, empty src,
src="#..." (the page itself), unparsable URLs, data:, javascript:, file: and
other non-http(s) links (also those a non-http <base> leads to), images
without a caption when `skip_empty_alt` is set, and repeats of a (url,
caption) pair already seen in the same file.  Images without alt text are
kept by default: the caption stage decides what a usable caption is.

WARC and WAT differ where the WAT lost information: a page with several
<base href> has the last one in its WAT (the HTML spec, and the WARC reader,
use the first); an <img> without src is not in the WAT at all.

WAT is the cheap way in: its links were extracted by Common Crawl already, so
reading one is JSON parsing, while a WARC needs every page parsed (pure Python,
a few MB/s per core; see pipeline/ingest/crawl_html.py).

Reading: warcio reads the records (pure Python, maintained by Webrecorder).
The file itself is opened and decompressed by the caller (Beam's FileSystems,
so gs:// works and a truncated .gz is detected); warcio sees plain WARC.

Memory: the duplicate check keeps an 8-byte digest of every distinct pair in
the file (about 60 bytes each in a Python set), so a Common Crawl file with ~1M
image links costs ~60 MB, released when the file is done.  Duplicates across
files are the dedup stages' job.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any, BinaryIO, Iterator

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from pipeline.ingest.crawl_html import CHUNK_BYTES, charset_param, decoded_chunks, image_rows_in_html, page_extra
from pipeline.ingest.crawl_links import DUPLICATE, CrawlParams, PageLanguage, Tally, document_base, image_link, page_language
from pipeline.ingest.input_files import CRAWL_FORMATS, MALFORMED_ROW, InputError, InputRow

__all__ = ["CrawlParams", "Tally", "check_archive", "crawl_rows", "image_rows_in_html"]

_WARCIO_FAILURES = (ArchiveLoadFailed, AttributeError, IndexError, KeyError, TypeError, ValueError)
MAX_WAT_RECORD_BYTES = 32 * 1024 * 1024  # a WAT record is one page's metadata; real ones are < 1 MB
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_IMAGE_LINK_PATH = "IMG@/src"
# The Metas Common Crawl's WAT generator writes for <html lang> and <html xml:lang>.
_WAT_HTML_LANG, _WAT_HTML_XML_LANG = "html@/lang", "html@/xml:lang"


# --------------------------------------------------------------------------- files


def crawl_rows(
    stream: BinaryIO, source: str, fmt: str, params: CrawlParams = CrawlParams(), tally: Tally | None = None
) -> Iterator[InputRow]:
    """Image-link rows of one WARC or WAT file, in file order, each (url, caption) pair once.

    `stream` is the decompressed file; `source` names it in error messages.
    `tally`, when given, counts every record and every image link read (see
    Tally).  Raises InputError when the file is not a WARC/WAT archive or ends
    inside a record.
    """
    if fmt not in CRAWL_FORMATS:
        raise ValueError(f"not a crawl format: {fmt!r}")
    tally = Tally() if tally is None else tally
    rows_of_record = _warc_record_rows if fmt == "warc" else _wat_record_rows
    seen: set[int] = set()
    for record in _records(stream, source):
        for row in rows_of_record(record, params, tally):
            if row.error is None:
                digest = _pair_digest(row.url, row.caption)
                if digest in seen:
                    tally.undo_row(DUPLICATE)
                    continue
                seen.add(digest)
            yield row


def check_archive(stream: BinaryIO, source: str) -> None:
    """Cheap pre-flight check: the first record of the file parses (an empty file passes)."""
    records = _records(stream, source)
    try:
        next(records, None)
    finally:
        records.close()


def _records(stream: BinaryIO, source: str) -> Iterator[Any]:
    """warcio's records; each one read to its end, so a truncated last record is noticed."""
    records = ArchiveIterator(_EndOfDataIsAnError(stream, source))
    while True:
        with _warcio_failures_named(source):
            record = next(records, None)
        if record is None:
            return
        if not record.format.startswith("warc"):  # warcio reads anything else as the old ARC format
            raise InputError(f"{source}: not a WARC file (found {record.format!r} records; ARC is not supported)")
        yield record
        with _warcio_failures_named(source):
            _read_to_end(record, source)


@contextlib.contextmanager
def _warcio_failures_named(source: str) -> Iterator[None]:
    """warcio's failures on a malformed record as InputError: besides ArchiveLoadFailed, warcio
    raises whatever its parsing meets (AttributeError for a response record without a
    WARC-Target-URI, ValueError for a bad length, ... found by tests/fuzz/fuzz_crawl.py)."""
    try:
        yield
    except _WARCIO_FAILURES as error:
        reason = f"{type(error).__name__}: {str(error)[:200]}"
        raise InputError(f"{source}: not a readable WARC/WAT file: {reason}") from error


class _EndOfDataIsAnError:
    """The file for warcio, with EOFError (a truncated compressed file) turned into InputError.

    warcio takes any EOFError to mean "no more records" and would silently drop
    the rest of a truncated file.
    """

    def __init__(self, stream: BinaryIO, source: str):
        self._stream, self._source = stream, source

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except EOFError as error:
            raise InputError(f"{self._source}: {error}") from error

    def close(self) -> None:
        self._stream.close()


def _read_to_end(record: Any, source: str) -> None:
    raw = record.raw_stream
    while raw.read(CHUNK_BYTES):
        pass
    if getattr(raw, "limit", 0) > 0:  # warcio's LimitReader: bytes the record promised but never came
        raise InputError(
            f"{source}: the record for {_target_uri(record)} ends early (truncated file?)"
        )


def _pair_digest(url: str | None, caption: str | None) -> int:
    key = f"{url}\x00{'' if caption is None else caption}".encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def _target_uri(record: Any) -> str:
    # Some writers wrap the URI in <>, as the WARC 1.0 grammar once showed it.
    return (record.rec_headers.get_header("WARC-Target-URI") or "").strip().strip("<>")


# --------------------------------------------------------------------------- WARC


def _warc_record_rows(record: Any, params: CrawlParams, tally: Tally) -> Iterator[InputRow]:
    http = record.http_headers
    content_type = (http.get_header("Content-Type") or "") if http is not None else ""
    if record.rec_type != "response" or content_type.split(";")[0].strip().lower() not in _HTML_TYPES:
        tally.record("not_page")
        return
    tally.record("page")
    text = decoded_chunks(record.content_stream(), charset_param(content_type), tally)
    http_language = http.get_header("Content-Language")
    yield from image_rows_in_html(text, _target_uri(record), params, http_language, tally)


# --------------------------------------------------------------------------- WAT


def _wat_record_rows(record: Any, params: CrawlParams, tally: Tally) -> Iterator[InputRow]:
    content_type = record.rec_headers.get_header("Content-Type") or ""
    if record.rec_type != "metadata" or "json" not in content_type.lower():
        tally.record("not_page")
        return
    payload = record.content_stream().read(MAX_WAT_RECORD_BYTES + 1)
    envelope = _wat_envelope(payload)
    if envelope is None:
        tally.record("malformed")
        yield InputRow(url=None, caption=None, extra={"page_url": _target_uri(record)}, error=MALFORMED_ROW)
        return
    response = _child(_child(envelope, "Payload-Metadata"), "HTTP-Response-Metadata")
    html = response.get("HTML-Metadata")
    if not isinstance(html, dict):
        tally.record("not_page")
        return
    tally.record("page")
    page_url = _wat_page_url(envelope, record)
    head = _child(html, "Head")
    base_url = document_base(_text(head.get("Base")), page_url)
    extra = page_extra(page_url, _wat_language(head, _child(response, "Headers")))
    if params.surrounding_words:
        extra["surrounding_text"] = None
    links = html.get("Links")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, dict) and link.get("path") == _IMAGE_LINK_PATH:
            src = link.get("url")
            src = _text(src) if isinstance(src, str) else src  # None or not text: counted as such
            found = image_link(src, _text(link.get("alt")), _text(link.get("title")), base_url, params, tally)
            if found is not None:
                yield InputRow(url=found[0], caption=found[1], extra=dict(extra))


def _wat_envelope(payload: bytes) -> dict | None:
    if len(payload) > MAX_WAT_RECORD_BYTES:
        return None
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON; nesting deeper than Python's stack
        return None
    envelope = document.get("Envelope") if isinstance(document, dict) else None
    return envelope if isinstance(envelope, dict) else None


def _wat_page_url(envelope: dict, record: Any) -> str:
    uri = _text(_child(envelope, "WARC-Header-Metadata").get("WARC-Target-URI"))
    return uri.strip().strip("<>") if uri and uri.strip() else _target_uri(record)


def _wat_language(head: dict, headers: dict) -> PageLanguage | None:
    """The page language from the WAT's Head Metas (in the WARC reader's order), else the HTTP header."""
    metas = head.get("Metas")
    metas = [meta for meta in metas if isinstance(meta, dict)] if isinstance(metas, list) else []
    return page_language(
        _first_meta(metas, "name", _WAT_HTML_LANG),
        _first_meta(metas, "name", _WAT_HTML_XML_LANG),
        _first_meta(metas, "http-equiv", "content-language"),
        _header(headers, "Content-Language"),
    )


def _first_meta(metas: list[dict], key: str, value: str) -> str | None:
    for meta in metas:
        if str(meta.get(key, "")).lower() == value:
            return _text(meta.get("content"))
    return None


def _child(mapping: dict, key: str) -> dict:
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def _header(headers: dict, name: str) -> str | None:
    for key, value in headers.items():  # WAT keeps the server's spelling of header names
        if key.lower() == name.lower():
            return _text(value)
    return None


def _text(value: Any) -> str | None:
    """A JSON string, with any lone surrogate (a bad \\udXXX escape) replaced: Parquet needs valid UTF-8."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value
