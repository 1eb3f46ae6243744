"""Image rows from one HTML page of a WARC file (see pipeline/ingest/crawl.py for the row format).

HTML is parsed with the standard library's `html.parser`: no dependency, fed
chunk by chunk (a page is never held whole as a tree), and tolerant of broken
markup.  Pages are read up to `MAX_PAGE_BYTES` (cc2dataset's limit; Common
Crawl itself truncates records at 1 MiB).  <base href> applies from where it
appears on (a streaming parser cannot look ahead); in practice it sits in
<head>, before any image.  Only `src` is read, not `srcset` or lazy-loading
`data-src`.
"""
from __future__ import annotations

import codecs
import collections
import re
from html.parser import HTMLParser
from typing import BinaryIO, Iterable, Iterator

from pipeline.ingest.crawl_links import CrawlParams, PageLanguage, Tally, document_base, image_link, page_language
from pipeline.ingest.input_files import InputRow

MAX_PAGE_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
# Where a page may declare its encoding: the HTML spec looks at the first 1024 bytes;
# real pages sometimes declare it later, after long comments or scripts.
_SNIFF_BYTES = 4096
# Text in these elements is not page text (and inside script/style, "<img" is not a tag).
_NON_TEXT_TAGS = frozenset({"script", "style", "noscript", "template", "title", "textarea"})
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)


def image_rows_in_html(
    chunks: Iterable[str],
    page_url: str,
    params: CrawlParams = CrawlParams(),
    http_language: str | None = None,
    tally: Tally | None = None,
) -> Iterator[InputRow]:
    """Rows for the <img> elements of one HTML page, fed to the parser chunk by chunk."""
    parser = _ImageParser(page_url, params, http_language, Tally() if tally is None else tally)
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


def decoded_chunks(stream: BinaryIO, http_charset: str | None, tally: Tally) -> Iterator[str]:
    """The page as text, up to MAX_PAGE_BYTES, in the encoding it declares (else UTF-8)."""
    head = stream.read(_SNIFF_BYTES)
    decoder = codecs.getincrementaldecoder(_page_encoding(http_charset, head))(errors="replace")
    yield decoder.decode(head)
    remaining = MAX_PAGE_BYTES - len(head)
    while remaining > 0:
        chunk = stream.read(min(CHUNK_BYTES, remaining))
        if not chunk:
            break
        remaining -= len(chunk)
        yield decoder.decode(chunk)
    if remaining <= 0 and stream.read(1):
        tally["pages_cut_at_size_cap"] += 1  # images past the cap are not seen, so not counted as links
    yield decoder.decode(b"", final=True)


def charset_param(content_type: str) -> str | None:
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
        codec = codecs.lookup(name)
    except (LookupError, ValueError):  # ValueError: a name with a NUL in it
        return None
    # Python also has bytes-to-bytes and str-to-str codecs (base64, zlib, rot13): not page encodings.
    return codec.name if getattr(codec, "_is_text_encoding", True) else None


class _ImageParser(HTMLParser):
    """Collects image rows while the page streams through; `take_ready()` hands them out in page order."""

    def __init__(self, page_url: str, params: CrawlParams, http_language: str | None, tally: Tally):
        super().__init__(convert_charrefs=True)
        self._page_url = page_url
        self._base_url = page_url
        self._base_seen = False
        self._params = params
        self._tally = tally
        self._html_language: tuple[str | None, str | None] | None = None  # (lang, xml:lang) of <html>
        self._meta_language: str | None = None
        self._http_language = http_language
        self._language_declared: tuple | None = None
        self._language_found: PageLanguage | None = None
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
        elif tag == "base" and not self._base_seen and "href" in attributes:
            # The first <base> with an href sets the base URL, even when that href is unusable.
            self._base_seen = True
            self._base_url = document_base(attributes["href"], self._page_url)
        elif tag == "html" and self._html_language is None:
            self._html_language = (attributes.get("lang"), attributes.get("xml:lang"))
        elif tag == "meta" and (attributes.get("http-equiv") or "").lower() == "content-language":
            self._meta_language = self._meta_language or attributes.get("content")

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

    def _image(self, attributes: dict[str, str | None]) -> None:
        src, alt, title = attributes.get("src"), attributes.get("alt"), attributes.get("title")
        link = image_link(src, alt, title, self._base_url, self._params, self._tally)
        if link is None:
            return
        row = InputRow(url=link[0], caption=link[1], extra=page_extra(self._page_url, self._language()))
        if not self._params.surrounding_words:
            self._ready.append(row)
            return
        # Every waiting image receives the same following words, so the oldest is
        # always the first to be complete: rows leave in page order.
        self._waiting.append([row, list(self._recent_words), []])

    def _language(self) -> PageLanguage | None:
        declared = (*(self._html_language or (None, None)), self._meta_language, self._http_language)
        if declared != self._language_declared:  # parse the tags once per page, not once per image
            self._language_declared, self._language_found = declared, page_language(*declared)
        return self._language_found

    def _finish(self, waiting: list) -> None:
        row, before, after = waiting
        row.extra["surrounding_text"] = " ".join(before + after)
        self._ready.append(row)


def page_extra(page_url: str, language: PageLanguage | None) -> dict:
    """The page columns of an image row: page_url, page_lang ("de") and page_lang_tag ("de-DE")."""
    return {
        "page_url": page_url,
        "page_lang": None if language is None else language.primary,
        "page_lang_tag": None if language is None else language.tag,
    }


def _first_values(attrs: list[tuple[str, str | None]]) -> dict[str, str]:
    """Attribute values by name; a repeated attribute keeps its first value, as browsers do.

    An attribute without a value (`<img src alt>`) is the empty string, as in the DOM.
    """
    values: dict[str, str] = {}
    for name, value in attrs:
        values.setdefault(name, "" if value is None else value)
    return values
