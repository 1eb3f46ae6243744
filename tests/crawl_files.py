"""WARC and WAT files for the crawl tests and the cc2dataset benchmark.

`SAME_PAGES` are pages written twice: as the HTML a WARC response holds, and
as the HTML-Metadata Common Crawl's WAT generator (ia-web-commons,
ExtractingParseObserver) writes for that HTML: `Head` with `Title`, `Base`
(the <base href>), `Metas` (one object per <meta> with its name, http-equiv,
property, rel and content attributes, and since December 2024 `HTML@/lang` /
`HTML@/xml:lang` for the attributes of <html>), and `Links` in page order,
images as `{"path": "IMG@/src", "url": src, "alt": ..., "title": ...}` with
only the attributes present, values entity-decoded but otherwise raw.  The WAT
side is written by hand from those rules, not derived by curate's own code.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter


def page(url, html, content_type="text/html; charset=utf-8", headers=()):
    body = html if isinstance(html, bytes) else html.encode("utf-8")
    http = StatusAndHeaders("200 OK", [("Content-Type", content_type), *headers], protocol="HTTP/1.1")
    return lambda writer: writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)


def request(url):
    http = StatusAndHeaders(f"GET {url} HTTP/1.1", [("Host", "site.test")], is_http_request=True)
    return lambda writer: writer.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=http)


def wat_record(url, document):
    body = document if isinstance(document, bytes) else json.dumps(document).encode("utf-8")
    return lambda writer: writer.create_warc_record(
        url, "metadata", payload=io.BytesIO(body), warc_content_type="application/json"
    )


def write_archive(path, records, compress=None):
    compress = str(path).endswith(".gz") if compress is None else compress
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=compress)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "curate tests"}))
        for make in records:
            writer.write_record(make(writer))
    return path


def wat_document(page_url, links, head=None, headers=None):
    """One WAT metadata record's JSON, in the layout Common Crawl writes (fields curate ignores included)."""
    html_metadata = {"Links": links}
    if head is not None:
        html_metadata = {"Head": head, "Links": links}
    return {
        "Container": {
            "Filename": "CC-MAIN-20250101000000-20250101030000-00000.warc.gz",
            "Compressed": True,
            "Offset": "1234",
            "Gzip-Metadata": {"Deflate-Length": "5678", "Header-Length": "10", "Footer-Length": "8"},
        },
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Length": "512",
            "Actual-Content-Length": "20000",
            "WARC-Header-Metadata": {
                "WARC-Type": "response",
                "WARC-Date": "2025-01-01T00:00:00Z",
                "WARC-Record-ID": "<urn:uuid:00000000-0000-0000-0000-000000000000>",
                "Content-Length": "20000",
                "Content-Type": "application/http; msgtype=response",
                "WARC-Target-URI": page_url,
            },
            "Block-Digest": "sha1:AAAA",
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Version": "HTTP/1.1", "Status": "200", "Reason": "OK"},
                    "Headers": headers or {"Content-Type": "text/html"},
                    "Headers-Length": "300",
                    "Entity-Length": "19700",
                    "Entity-Trailing-Slop-Length": "0",
                    "Entity-Digest": "sha1:BBBB",
                    "HTML-Metadata": html_metadata,
                },
            },
        },
    }


def img(url, alt=None, title=None):
    """An IMG@/src link as the WAT generator writes it: only the attributes the tag had."""
    link = {"path": "IMG@/src", "url": url}
    if alt is not None:
        link["alt"] = alt
    if title is not None:
        link["title"] = title
    return link


@dataclass
class SamePage:
    case: str  # the edge case the page shows (the benchmark's class)
    url: str
    html: str
    wat_head: dict
    wat_links: list
    headers: list = field(default_factory=list)  # HTTP response headers besides Content-Type

    def warc_record(self):
        return page(self.url, self.html, headers=self.headers)

    def wat_record(self):
        wat_headers = {"Content-Type": "text/html; charset=utf-8", **dict(self.headers)}
        return wat_record(self.url, wat_document(self.url, self.wat_links, self.wat_head, wat_headers))


SAME_PAGES = [
    SamePage(
        "html_lang",
        "http://news.example.cn/2024/a.html",
        '<!DOCTYPE html><html lang="zh-cn"><head><meta charset="utf-8"><title>新闻</title></head>'
        '<body><img src="/img/cat.jpg" alt="一只猫"><a href="/more">更多</a></body></html>',
        {"Title": "新闻", "Metas": [{"name": "HTML@/lang", "content": "zh-cn"}]},
        [img("/img/cat.jpg", "一只猫"), {"path": "A@/href", "url": "/more", "text": "更多"}],
    ),
    SamePage(
        "title_without_alt",
        "https://www.example.de/tiere/",
        '<html lang="de-DE" xml:lang="de-DE"><head><title>Tiere</title>'
        '<meta name="description" content="Hunde"></head><body>'
        '<img src="hund.jpg" title="Ein Hund im Schnee">'
        '<img src="logo.png" alt="" title="Startseite">'
        '<img src="katze.jpg" alt="Eine Katze" title="Bild vergrößern"></body></html>',
        {
            "Title": "Tiere",
            "Metas": [
                {"name": "HTML@/lang", "content": "de-DE"},
                {"name": "HTML@/xml:lang", "content": "de-DE"},
                {"name": "description", "content": "Hunde"},
            ],
        },
        [
            img("hund.jpg", title="Ein Hund im Schnee"),
            img("logo.png", "", "Startseite"),
            img("katze.jpg", "Eine Katze", "Bild vergrößern"),
        ],
    ),
    SamePage(
        "content_language_not_a_tag",
        "http://www.example.nl/",
        '<html><head><meta http-equiv="content-language" content="utf-8"></head>'
        '<body><img src="fiets.jpg" alt="Een fiets bij de gracht"></body></html>',
        {"Metas": [{"http-equiv": "content-language", "content": "utf-8"}]},
        [img("fiets.jpg", "Een fiets bij de gracht")],
        headers=[("Content-Language", "nl")],
    ),
    SamePage(
        "non_http_base",
        "http://www.example.com/saved.html",
        '<html lang="en"><head><base href="file:///C:/saved/"></head><body>'
        '<img src="photo.jpg" alt="A photo saved to disk">'
        '<img src="https://cdn.example.com/real.jpg" alt="An absolute photo"></body></html>',
        {"Base": "file:///C:/saved/", "Metas": [{"name": "HTML@/lang", "content": "en"}]},
        [img("photo.jpg", "A photo saved to disk"), img("https://cdn.example.com/real.jpg", "An absolute photo")],
    ),
    SamePage(
        "page_itself",
        "http://www.example.com/gallery/",
        '<html lang="en"><body><img src="#" alt="Hash only"><img src="" alt="Empty source">'
        '<img src="  " alt="Spaces only"><img src="#top" alt="An anchor">'
        '<img src="sunset.jpg" alt="A sunset over the sea"></body></html>',
        {"Metas": [{"name": "HTML@/lang", "content": "en"}]},
        [
            img("#", "Hash only"),
            img("", "Empty source"),
            img("  ", "Spaces only"),
            img("#top", "An anchor"),
            img("sunset.jpg", "A sunset over the sea"),
        ],
    ),
    SamePage(
        "whatwg_url",
        "http://www.example.org/dir/page.html",
        '<html lang="en-GB"><body>'
        '<img src="https:///nohost.jpg" alt="Three slashes">'
        '<img src="\\\\cdn.example.com\\img\\back.jpg" alt="Backslashes">'
        '<img src="img/tab&#9;bed.jpg" alt="A tab inside">'
        '<img src=" \x01img/c0.jpg\x1f " alt="Control characters around">'
        '<img src="http://bücher.example/ä.jpg" alt="Unicode host">'
        '<img src="img/a b.jpg" alt="A space inside">'
        '<img src="HTTPS:cdn.example.com/x.jpg" alt="Other scheme, no slashes">'
        '<img src="http:/one-slash.jpg" alt="Same scheme, one slash">'
        '<img src="http://[::1" alt="Broken IPv6 host">'
        "</body></html>",
        {"Metas": [{"name": "HTML@/lang", "content": "en-GB"}]},
        [
            img("https:///nohost.jpg", "Three slashes"),
            img("\\\\cdn.example.com\\img\\back.jpg", "Backslashes"),
            img("img/tab\tbed.jpg", "A tab inside"),
            img(" \x01img/c0.jpg\x1f ", "Control characters around"),
            img("http://bücher.example/ä.jpg", "Unicode host"),
            img("img/a b.jpg", "A space inside"),
            img("HTTPS:cdn.example.com/x.jpg", "Other scheme, no slashes"),
            img("http:/one-slash.jpg", "Same scheme, one slash"),
            img("http://[::1", "Broken IPv6 host"),
        ],
    ),
    SamePage(
        "caption_and_fragment",
        "http://www.example.it/",
        '<html><head><meta http-equiv="Content-Language" content="it-IT"></head><body>'
        '<img src="/a.jpg#zoom" alt=" Una  sedia\n rossa ">'
        '<img src="b.jpg" alt=" ">'
        '<img src="HTTP://CDN.Example.IT/Up.jpg" alt="Maiuscole"></body></html>',
        {"Metas": [{"http-equiv": "Content-Language", "content": "it-IT"}]},
        [img("/a.jpg#zoom", " Una  sedia\n rossa "), img("b.jpg", " "), img("HTTP://CDN.Example.IT/Up.jpg", "Maiuscole")],
    ),
    SamePage(
        "other_schemes",
        "https://shop.example.com/item",
        '<html lang="fr"><head><base href="javascript:void(0)"></head><body>'
        '<img src="data:image/gif;base64,R0lGOD" alt="Inline">'
        '<img src="javascript:alert(1)" alt="Script">'
        '<img src="/p/1.jpg#zoom" alt="Une chaise  en bois">'
        '<img src="/p/1.jpg" alt="Une chaise en bois"></body></html>',
        {"Base": "javascript:void(0)", "Metas": [{"name": "HTML@/lang", "content": "fr"}]},
        [
            img("data:image/gif;base64,R0lGOD", "Inline"),
            img("javascript:alert(1)", "Script"),
            img("/p/1.jpg#zoom", "Une chaise  en bois"),
            img("/p/1.jpg", "Une chaise en bois"),
        ],
    ),
]


def write_fuzz_seeds(directory):
    """Seed corpus of tests/fuzz/fuzz_crawl.py: each of SAME_PAGES as a WARC and as a WAT, uncompressed
    (first byte even: the input is the archive as it is), and one structured input (first byte odd)."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, same_page in enumerate(SAME_PAGES):
        for kind, record in (("warc", same_page.warc_record()), ("wat", same_page.wat_record())):
            path = write_archive(directory / f"{index}.{kind}", [record], compress=False)
            path.write_bytes(b"\x00" + path.read_bytes())
    (directory / "structured").write_bytes(b"\x01" + b"http://s.test/\x00de\x00<img src=a alt=b>" * 4)
