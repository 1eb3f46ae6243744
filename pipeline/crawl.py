"""Image links from web crawls: WARC files (HTML pages) and WAT files (link metadata).

Common Crawl publishes every crawl as WARC files (`*.warc.gz`, the pages
themselves) and WAT files (`*.warc.wat.gz`, JSON metadata extracted from the
same pages, including every `<img src alt>` as a link with path `IMG@/src`).
Both become one `InputRow` per image link:

    url      absolute http(s) URL of the image (resolved against <base href>, then the page URL;
             the #fragment dropped)
    caption  the alt text, whitespace collapsed; "" for alt="", None without alt
    extra    page_url          the crawled page (WARC-Target-URI)
             page_lang         the page's declared language, lower-cased (<html lang>, else
                               <meta http-equiv=content-language>, else the HTTP Content-Language
                               header), or None
             surrounding_text  only when CrawlParams.surrounding_words > 0: up to that many words of
                               page text before and after the image (WARC only; None for WAT, which
                               holds no page text)

Skipped: data:, javascript: and other non-http(s) sources, unparsable URLs,
and repeats of a (url, caption) pair already seen in the same file.  Images
without alt text are kept unless `skip_empty_alt` is set: the caption stage
decides what a usable caption is.

WAT is the cheap way in: its links were extracted by Common Crawl already, so
reading one is JSON parsing, while a WARC needs every page parsed (pure Python,
a few MB/s per core).

Parsing choices:
* warcio reads the records (pure Python, maintained by Webrecorder).  The file
  itself is opened and decompressed by the caller (Beam's FileSystems, so
  gs:// works and a truncated .gz is detected); warcio sees plain WARC.
* HTML is parsed with the standard library's `html.parser`: no dependency, fed
  chunk by chunk (a page is never held whole as a tree), and tolerant of broken
  markup.  Pages are read up to `MAX_PAGE_BYTES` (cc2dataset's limit; Common
  Crawl itself truncates records at 1 MiB).
* <base href> applies from where it appears on (a streaming parser cannot look
  ahead); in practice it sits in <head>, before any image.  Only `src` is read,
  not `srcset` or lazy-loading `data-src`.

Memory: the duplicate check keeps an 8-byte digest of every distinct pair in
the file (about 60 bytes each in a Python set), so a Common Crawl file with ~1M
image links costs ~60 MB, released when the file is done.  Duplicates across
files are the dedup stages' job.
"""
from __future__ import annotations

import codecs
import collections
import hashlib
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, BinaryIO, Iterable, Iterator
from urllib.parse import urljoin, urlsplit

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from pipeline.params import ParamError
from pipeline.readers import CRAWL_FORMATS, MALFORMED_ROW, InputError, InputRow

MAX_PAGE_BYTES = 4 * 1024 * 1024
MAX_WAT_RECORD_BYTES = 32 * 1024 * 1024  # a WAT record is one page's metadata; real ones are < 1 MB
_CHUNK_BYTES = 64 * 1024
# Where a page may declare its encoding: the HTML spec looks at the first 1024 bytes;
# real pages sometimes declare it later, after long comments or scripts.
_SNIFF_BYTES = 4096
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_IMAGE_LINK_PATH = "IMG@/src"
# Text in these elements is not page text (and inside script/style, "<img" is not a tag).
_NON_TEXT_TAGS = frozenset({"script", "style", "noscript", "template", "title", "textarea"})
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_LANGUAGE_TAG = re.compile(r"^[a-z]{1,8}(-[a-z0-9]{1,8})*$")
_URL_NOISE = re.compile(r"[\t\n\r]")  # browsers drop these inside URLs


@dataclass(frozen=True)
class CrawlParams:
    """How image links are taken from crawl files."""

    surrounding_words: int = 0  # words of page text kept before and after each image; 0: none
    skip_empty_alt: bool = False  # drop images without alt text (default: keep, the caption stage decides)

    def __post_init__(self) -> None:
        if self.surrounding_words < 0:
            raise ParamError(f"crawl.surrounding_words must be >= 0, got {self.surrounding_words}")


# --------------------------------------------------------------------------- files


def crawl_rows(stream: BinaryIO, source: str, fmt: str, params: CrawlParams = CrawlParams()) -> Iterator[InputRow]:
    """Image-link rows of one WARC or WAT file, in file order, each (url, caption) pair once.

    `stream` is the decompressed file; `source` names it in error messages.
    Raises InputError when the file is not a WARC/WAT archive or ends inside a
    record.
    """
    if fmt not in CRAWL_FORMATS:
        raise ValueError(f"not a crawl format: {fmt!r}")
    rows_of_record = _warc_record_rows if fmt == "warc" else _wat_record_rows
    seen: set[int] = set()
    for record in _records(stream, source):
        for row in rows_of_record(record, params):
            if row.error is None:
                digest = _pair_digest(row.url, row.caption)
                if digest in seen:
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
    try:
        for record in ArchiveIterator(_EndOfDataIsAnError(stream, source)):
            if not record.format.startswith("warc"):  # warcio reads anything else as the old ARC format
                raise InputError(f"{source}: not a WARC file (found {record.format!r} records; ARC is not supported)")
            yield record
            _read_to_end(record, source)
    except ArchiveLoadFailed as error:
        raise InputError(f"{source}: not a readable WARC/WAT file: {str(error)[:200]}") from error


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
    while raw.read(_CHUNK_BYTES):
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


def _warc_record_rows(record: Any, params: CrawlParams) -> Iterator[InputRow]:
    if record.rec_type != "response" or record.http_headers is None:
        return
    content_type = record.http_headers.get_header("Content-Type") or ""
    if content_type.split(";")[0].strip().lower() not in _HTML_TYPES:
        return
    page_url = _target_uri(record)
    http_language = record.http_headers.get_header("Content-Language")
    text = _decoded_chunks(record.content_stream(), _charset_param(content_type))
    yield from image_rows_in_html(text, page_url, params, http_language)


def image_rows_in_html(
    chunks: Iterable[str], page_url: str, params: CrawlParams = CrawlParams(), http_language: str | None = None
) -> Iterator[InputRow]:
    """Rows for the <img> elements of one HTML page, fed to the parser chunk by chunk."""
    parser = _ImageParser(page_url, params, http_language)
    for chunk in chunks:
        try:
            parser.feed(chunk)
        except (AssertionError, ValueError):  # html.parser's rare give-ups on broken markup
            break
        yield from parser.take_ready()
    try:
        parser.close()
    except (AssertionError, ValueError):
        pass
    parser.flush()
    yield from parser.take_ready()


def _decoded_chunks(stream: BinaryIO, http_charset: str | None) -> Iterator[str]:
    """The page as text, up to MAX_PAGE_BYTES, in the encoding it declares (else UTF-8)."""
    head = stream.read(_SNIFF_BYTES)
    decoder = codecs.getincrementaldecoder(_page_encoding(http_charset, head))(errors="replace")
    yield decoder.decode(head)
    remaining = MAX_PAGE_BYTES - len(head)
    while remaining > 0:
        chunk = stream.read(min(_CHUNK_BYTES, remaining))
        if not chunk:
            break
        remaining -= len(chunk)
        yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


def _charset_param(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


def _page_encoding(http_charset: str | None, head: bytes) -> str:
    """A byte-order mark, else the HTTP charset, else <meta charset>, else UTF-8 (the HTML spec's order)."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    for declared in (http_charset, _meta_charset(head)):
        encoding = _known_encoding(declared)
        if encoding is not None:
            return encoding
    return "utf-8"


def _meta_charset(head: bytes) -> str | None:
    found = _META_CHARSET.search(head)
    if found is None:
        return None
    name = found.group(1).decode("ascii").lower()
    # A page that can be read far enough to find this declaration is not UTF-16 (HTML spec).
    return "utf-8" if name.startswith("utf-16") else name


def _known_encoding(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


class _ImageParser(HTMLParser):
    """Collects image rows while the page streams through; `take_ready()` hands them out in page order."""

    def __init__(self, page_url: str, params: CrawlParams, http_language: str | None):
        super().__init__(convert_charrefs=True)
        self._page_url = page_url
        self._base_url = page_url
        self._base_seen = False
        self._params = params
        self._html_language: str | None = None
        self._meta_language: str | None = None
        self._http_language = language_tag(http_language)
        self._non_text_depth = 0
        self._recent_words: collections.deque[str] = collections.deque(maxlen=params.surrounding_words)
        # Images still collecting the words that follow them: [row, words before, words after].
        self._waiting: collections.deque[list] = collections.deque()
        self._ready: list[InputRow] = []

    def take_ready(self) -> list[InputRow]:
        ready, self._ready = self._ready, []
        return ready

    def flush(self) -> None:
        """The page is done: images still waiting for words get what there is."""
        while self._waiting:
            self._finish(self._waiting.popleft())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = _first_values(attrs)
        if tag in _NON_TEXT_TAGS:
            self._non_text_depth += 1
        elif tag == "img":
            self._image(attributes)
        elif tag == "base":
            self._base(attributes.get("href"))
        elif tag == "html" and self._html_language is None:
            self._html_language = language_tag(attributes.get("lang") or attributes.get("xml:lang"))
        elif tag == "meta" and (attributes.get("http-equiv") or "").lower() == "content-language":
            self._meta_language = self._meta_language or language_tag(attributes.get("content"))

    def handle_endtag(self, tag: str) -> None:
        if tag in _NON_TEXT_TAGS and self._non_text_depth > 0:
            self._non_text_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._non_text_depth or not self._params.surrounding_words:
            return
        for word in data.split():
            self._recent_words.append(word)
            for waiting in self._waiting:
                if len(waiting[2]) < self._params.surrounding_words:
                    waiting[2].append(word)
        while self._waiting and len(self._waiting[0][2]) >= self._params.surrounding_words:
            self._finish(self._waiting.popleft())

    def _base(self, href: str | None) -> None:
        if self._base_seen or not href:
            return
        base = absolute_http_url(href, self._page_url)
        if base is not None:
            self._base_url, self._base_seen = base, True

    def _image(self, attributes: dict[str, str | None]) -> None:
        url = absolute_http_url(attributes.get("src"), self._base_url)
        caption = clean_alt(attributes.get("alt"))
        if url is None or (self._params.skip_empty_alt and not caption):
            return
        language = self._html_language or self._meta_language or self._http_language
        row = InputRow(url=url, caption=caption, extra={"page_url": self._page_url, "page_lang": language})
        if not self._params.surrounding_words:
            self._ready.append(row)
            return
        # Every waiting image receives the same following words, so the oldest is
        # always the first to be complete: rows leave in page order.
        self._waiting.append([row, list(self._recent_words), []])

    def _finish(self, waiting: list) -> None:
        row, before, after = waiting
        row.extra["surrounding_text"] = " ".join(before + after)
        self._ready.append(row)


def _first_values(attrs: list[tuple[str, str | None]]) -> dict[str, str | None]:
    """Attribute values by name; a repeated attribute keeps its first value, as browsers do."""
    values: dict[str, str | None] = {}
    for name, value in attrs:
        values.setdefault(name, value)
    return values


# --------------------------------------------------------------------------- WAT


def _wat_record_rows(record: Any, params: CrawlParams) -> Iterator[InputRow]:
    content_type = record.rec_headers.get_header("Content-Type") or ""
    if record.rec_type != "metadata" or "json" not in content_type.lower():
        return
    payload = record.content_stream().read(MAX_WAT_RECORD_BYTES + 1)
    envelope = _wat_envelope(payload)
    if envelope is None:
        yield InputRow(url=None, caption=None, extra={"page_url": _target_uri(record)}, error=MALFORMED_ROW)
        return
    response = _child(_child(envelope, "Payload-Metadata"), "HTTP-Response-Metadata")
    html = _child(response, "HTML-Metadata")
    links = html.get("Links")
    if not isinstance(links, list):
        return
    page_url = _wat_page_url(envelope, record)
    head = _child(html, "Head")
    base_url = absolute_http_url(_text(head.get("Base")), page_url)
    language = language_tag(_wat_meta_language(head)) or language_tag(
        _header(_child(response, "Headers"), "Content-Language")
    )
    extra = {"page_url": page_url, "page_lang": language}
    if params.surrounding_words:
        extra["surrounding_text"] = None
    for link in links:
        if not isinstance(link, dict) or link.get("path") != _IMAGE_LINK_PATH:
            continue
        url = absolute_http_url(_text(link.get("url")), base_url or page_url)
        caption = clean_alt(_text(link.get("alt")))
        if url is not None and not (params.skip_empty_alt and not caption):
            yield InputRow(url=url, caption=caption, extra=dict(extra))


def _wat_envelope(payload: bytes) -> dict | None:
    if len(payload) > MAX_WAT_RECORD_BYTES:
        return None
    try:
        document = json.loads(payload)
    except ValueError:  # includes bad UTF-8
        return None
    envelope = document.get("Envelope") if isinstance(document, dict) else None
    return envelope if isinstance(envelope, dict) else None


def _wat_page_url(envelope: dict, record: Any) -> str:
    uri = _text(_child(envelope, "WARC-Header-Metadata").get("WARC-Target-URI"))
    return uri.strip().strip("<>") if uri and uri.strip() else _target_uri(record)


def _wat_meta_language(head: dict) -> str | None:
    metas = head.get("Metas")
    for meta in metas if isinstance(metas, list) else ():
        if isinstance(meta, dict) and str(meta.get("http-equiv", "")).lower() == "content-language":
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


# --------------------------------------------------------------------------- shared


def absolute_http_url(src: str | None, base_url: str) -> str | None:
    """`src` resolved against `base_url`, without #fragment; None unless it is http(s) with a host."""
    if not src:
        return None
    src = _URL_NOISE.sub("", src.strip(" \t\n\r\f"))
    try:
        parts = urlsplit(urljoin(base_url, src))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    return parts._replace(fragment="").geturl()


def clean_alt(alt: str | None) -> str | None:
    return None if alt is None else " ".join(alt.split())


def language_tag(value: str | None) -> str | None:
    """A declared language as a lower-case BCP 47 tag ("en-us"), the first of a list; None if malformed."""
    if not value:
        return None
    tag = value.split(",")[0].strip().replace("_", "-").lower()
    return tag if _LANGUAGE_TAG.match(tag) else None
