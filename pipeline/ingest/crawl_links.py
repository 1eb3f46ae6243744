"""The rules WARC and WAT reading share: what an image link resolves to, its caption, the page language.

Both readers see the same raw values (WAT links hold the attribute values
Common Crawl's parser found, entity-decoded), so one set of rules gives the
same rows from a page's WARC record and from its WAT record.

URLs follow the WHATWG URL standard, as a browser resolves them, through
ada-url (a maintained implementation of that standard): backslashes count as
slashes in http(s) URLs, tabs and newlines inside are removed, leading and
trailing spaces and control characters are stripped, `https:///x.jpg` names
host `x.jpg`, hosts go through IDNA, paths are percent-encoded.  Python's
urljoin differs on all of these.

The document's base URL follows the HTML spec: the first <base> with an href
attribute, resolved against the page URL; a base that does not parse, or is a
data: or javascript: URL, is ignored.  Any other base applies, also a
non-http one (`file:///C:/saved/`): the links resolved against it are then not
http(s) and not image links.

Language tags (`<html lang>`, a Content-Language pragma or header) are parsed
as BCP 47 by langcodes; a value that is not a language tag (`utf-8`), a list
of several (`de, en`: the HTML spec calls the language unknown then), `und`
and private-use tags give no language.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import ada_url
import langcodes

from pipeline.ingest.crawl_params import CrawlParams, Tally  # noqa: F401 -- this module's API too

_HTTP_PREFIXES = ("http://", "https://")
_ASCII_WHITESPACE = " \t\n\r\f"  # what the HTML spec strips around a URL attribute
_C0_CONTROLS_AND_SPACE = "".join(map(chr, range(0x21)))  # what the WHATWG URL parser strips (a superset)
_URL_TABS_AND_NEWLINES = re.compile("[\t\n\r]")
_IGNORED_BASE_SCHEMES = ("data:", "javascript:")
_MAX_TAG_CHARS = 35  # RFC 5646 4.4.1: tags of up to 35 characters must be supported; longer ones are not real
_MAX_PARSED_TAGS = 50_000  # langcodes keeps every parsed tag; crawl files hold arbitrary ones

# Why an image link gave no row.  Every link seen is counted once: a row, or one of these.
NO_SRC = "no_src"  # <img> without a src attribute (WARC only: WAT lists no such link)
EMPTY_SRC = "empty_src"  # src="" or only spaces: no image (HTML spec)
FRAGMENT_ONLY = "fragment_only"  # src="#..." names the page itself, never an image
UNPARSABLE = "unparsable"  # not a URL by the WHATWG rules
NOT_HTTP = "not_http"  # data:, javascript:, file:, ftp: ...
NO_ALT = "no_alt"  # crawl.skip_empty_alt
DUPLICATE = "duplicate"  # a (url, caption) pair already read from the same file


class Resolved(NamedTuple):
    url: str | None  # absolute http(s) URL without #fragment, when the link is an image link
    dropped_because: str | None  # otherwise why not


def document_base(base_href: str | None, page_url: str) -> str:
    """The URL relative links of a page resolve against: its first <base href>, else the page URL."""
    if base_href is None:
        return page_url
    try:
        base = ada_url.URL(base_href.strip(_ASCII_WHITESPACE), page_url)
    except ValueError:  # the base does not parse (or the page URL does not): the page URL stays
        return page_url
    return page_url if base.protocol in _IGNORED_BASE_SCHEMES else base.href


def image_link(
    src: object, alt: str | None, title: str | None, base_url: str, params: CrawlParams, tally: Tally
) -> tuple[str, str | None] | None:
    """An image's (url, caption), or None when it gives no row; counted in `tally` either way."""
    url, dropped_because = resolve_image_url(src, base_url)
    caption = caption_of(alt, title, params)
    if url is not None and params.skip_empty_alt and not caption:
        dropped_because = NO_ALT
    tally.link(dropped_because)
    return None if dropped_because else (url, caption)


def resolve_image_url(src: object, base_url: str) -> Resolved:
    """An image's src as a browser resolves it against the document's base URL."""
    if src is None:
        return Resolved(None, NO_SRC)
    if not isinstance(src, str):  # a WAT link whose url is not a JSON string
        return Resolved(None, UNPARSABLE)
    # What the URL parser itself ignores: C0 controls and spaces around, tabs and newlines inside.
    bare = _URL_TABS_AND_NEWLINES.sub("", src.strip(_C0_CONTROLS_AND_SPACE))
    if not bare:
        return Resolved(None, EMPTY_SRC)
    if bare.startswith("#"):
        return Resolved(None, FRAGMENT_ONLY)
    href = _joined(src, base_url)
    if href is None:
        return Resolved(None, UNPARSABLE)
    if not href.startswith(_HTTP_PREFIXES):  # a parsed URL's scheme is lower case
        return Resolved(None, NOT_HTTP)
    # In a parsed URL a "#" only starts the fragment (elsewhere it is percent-encoded).
    return Resolved(href.partition("#")[0], None)


def _joined(src: str, base_url: str) -> str | None:
    """The href of src parsed against base_url (ada's join_url: a string, no URL object to wrap)."""
    try:
        return ada_url.join_url(base_url, src)
    except ValueError:
        pass
    try:  # the base itself may not parse (a broken WARC-Target-URI): an absolute src still does
        return ada_url.URL(src).href
    except ValueError:
        return None


def caption_of(alt: str | None, title: str | None, params: CrawlParams) -> str | None:
    """The alt text, whitespace collapsed ("" for alt="", None without alt); with
    crawl.title_fallback, the title when the alt is missing or blank (and the title is not)."""
    caption = clean_text(alt)
    if params.title_fallback and not caption:
        return clean_text(title) or caption
    return caption


def clean_text(value: str | None) -> str | None:
    return None if value is None else " ".join(value.split())


class PageLanguage(NamedTuple):
    primary: str  # the language subtag, lower case: "de"
    tag: str  # the whole tag in its standard form: "de-DE"


def page_language(*declared: str | None) -> PageLanguage | None:
    """The first of the declared values (in the order given) that is one language tag."""
    for value in declared:
        language = _language_tag(value)
        if language is not None:
            return language
    return None


def _language_tag(value: str | None) -> PageLanguage | None:
    if not value:
        return None
    value = value.strip(_ASCII_WHITESPACE)
    if not value or len(value) > _MAX_TAG_CHARS or "," in value:
        return None
    _bound_langcodes_cache()
    try:
        tag = langcodes.standardize_tag(value)
        primary = langcodes.Language.get(tag).language
    except (langcodes.LanguageTagError, ValueError):
        return None
    if not primary or primary == "und" or primary.startswith("x-"):
        return None
    return PageLanguage(primary.lower(), tag)


def _bound_langcodes_cache() -> None:
    # langcodes caches every tag it parses, without a bound; a crawl has arbitrary ones.
    cache = getattr(langcodes.Language, "_PARSE_CACHE", None)
    if isinstance(cache, dict) and len(cache) > _MAX_PARSED_TAGS:
        cache.clear()
