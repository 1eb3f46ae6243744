"""WARC/WAT ingestion: image links from crawled pages, read through pipeline.ingest.readers."""
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.ingest import crawl_html
from pipeline.cli import main
from pipeline.ingest.crawl import CrawlParams, Tally, image_rows_in_html
from pipeline.demo.localweb import LocalWeb
from pipeline.ingest.input_files import MALFORMED_ROW, InputError, detect_format
from pipeline.ingest.readers import check_input, read_rows
from tests.crawl_files import SAME_PAGES, img, page, request, wat_document, wat_record, write_archive, write_fuzz_seeds
from tests.fuzz.launch import fresh_process

SITE = "http://site.test/dir/page.html"


# --------------------------------------------------------------------------- helpers


def rows_of(path, **params):
    return list(read_rows(str(path), detect_format(str(path)), crawl_params=CrawlParams(**params)))


def pairs(rows):
    return [(row.url, row.caption) for row in rows]


def html_rows(html, **params):
    return list(image_rows_in_html([html], SITE, CrawlParams(**params)))


# --------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("CC-MAIN-20240101-00000.warc.gz", "warc"),
        ("pages.warc", "warc"),
        ("CC-MAIN-20240101-00000.warc.wat.gz", "wat"),
        ("links.wat", "wat"),
        ("links.WAT.GZ", "wat"),
    ],
)
def test_crawl_file_names_are_recognised(name, fmt):
    assert detect_format(f"gs://bucket/crawl/{name}") == fmt


# --------------------------------------------------------------------------- WARC


ALL_KINDS_PAGE = """<!doctype html><html lang="en-US"><head><title>Gallery</title></head><body>
<img src="img/a.jpg" alt="A relative image">
<img src="/root.png" alt="From the site root">
<img src="//cdn.test/p.webp" alt="Protocol relative">
<img src="https://other.test/x.jpg#frag" alt="  Spread
   over lines  ">
<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline data">
<img src="javascript:alert(1)" alt="script">
<img src="ftp://files.test/a.jpg" alt="ftp">
<img src="http://[::1" alt="broken ipv6">
<img alt="no source">
<img src="img/no-alt.jpg">
<img src="img/empty-alt.jpg" alt="">
</body></html>"""


@pytest.mark.parametrize("name", ["crawl.warc.gz", "crawl.warc"])
def test_warc_images_resolved_and_filtered(tmp_path, name):
    path = write_archive(tmp_path / name, [request(SITE), page(SITE, ALL_KINDS_PAGE)])
    rows = rows_of(path)
    assert pairs(rows) == [
        ("http://site.test/dir/img/a.jpg", "A relative image"),
        ("http://site.test/root.png", "From the site root"),
        ("http://cdn.test/p.webp", "Protocol relative"),
        ("https://other.test/x.jpg", "Spread over lines"),
        ("http://site.test/dir/img/no-alt.jpg", None),
        ("http://site.test/dir/img/empty-alt.jpg", ""),
    ]
    assert all(row.extra == {"page_url": SITE, "page_lang": "en", "page_lang_tag": "en-US"} for row in rows)
    assert all(row.error is None for row in rows)


def test_skip_empty_alt_drops_missing_and_blank_alt(tmp_path):
    path = write_archive(tmp_path / "crawl.warc.gz", [page(SITE, ALL_KINDS_PAGE)])
    captions = [row.caption for row in rows_of(path, skip_empty_alt=True)]
    assert captions == ["A relative image", "From the site root", "Protocol relative", "Spread over lines"]


def test_base_href_is_used_and_only_the_first_one():
    html = """<head><base target="_blank"><base href="../assets/"><base href="http://ignored.test/"></head>
    <img src="a.jpg" alt="one"><img src="/b.jpg" alt="two">"""
    assert pairs(html_rows(html)) == [("http://site.test/assets/a.jpg", "one"), ("http://site.test/b.jpg", "two")]


def test_a_first_base_with_an_empty_href_is_the_page_url():
    html = '<base href=""><base href="http://ignored.test/"><img src="a.jpg" alt="x">'
    assert pairs(html_rows(html)) == [("http://site.test/dir/a.jpg", "x")]


@pytest.mark.parametrize("base", ["javascript:void(0)", "data:text/html,x", "http://[::1"])
def test_base_href_that_is_javascript_data_or_unparsable_is_ignored(base):
    rows = html_rows(f'<base href="{base}"><img src="a.jpg" alt="x">')
    assert pairs(rows) == [("http://site.test/dir/a.jpg", "x")]


def test_a_non_http_base_applies_and_its_links_are_not_images():
    tally = Tally()
    html = """<base href="file:///C:/saved/"><img src="photo.jpg" alt="saved">
    <img src="//cdn.test/p.jpg" alt="scheme-relative: file:">
    <img src="https://cdn.test/real.jpg" alt="absolute">"""
    rows = list(image_rows_in_html([html], SITE, CrawlParams(), tally=tally))
    assert pairs(rows) == [("https://cdn.test/real.jpg", "absolute")]
    assert (tally["links"], tally["rows"], tally["link/not_http"]) == (3, 1, 2)


@pytest.mark.parametrize(
    "src, why",
    [
        ("#", "fragment_only"), ("#top", "fragment_only"), ("\x01\t#", "fragment_only"), ("", "empty_src"),
        (" \n ", "empty_src"), ("\x01", "empty_src"), (None, "no_src"),
    ],
)
def test_sources_that_name_no_image_are_dropped_and_counted(src, why):
    tally = Tally()
    attribute = "" if src is None else f' src="{src}"'
    rows = list(image_rows_in_html([f'<img{attribute} alt="x"><img src="ok.jpg" alt="y">'], SITE, tally=tally))
    assert pairs(rows) == [("http://site.test/dir/ok.jpg", "y")]
    assert dict(tally) == {"links": 2, "rows": 1, f"link/{why}": 1}


@pytest.mark.parametrize(
    "src, expected",
    [
        ("https:///nohost.jpg", "https://nohost.jpg/"),
        ("\\\\cdn.test\\img\\back.jpg", "http://cdn.test/img/back.jpg"),
        ("img\\sub\\b.jpg", "http://site.test/dir/img/sub/b.jpg"),
        ("img/ta&#9;b\nbed.jpg", "http://site.test/dir/img/tabbed.jpg"),
        ("\x01img/c0.jpg\x1f ", "http://site.test/dir/img/c0.jpg"),
        ("//cdn.test/p.jpg", "http://cdn.test/p.jpg"),
        ("HTTPS:cdn.test/x.jpg", "https://cdn.test/x.jpg"),
        ("http:/one-slash.jpg", "http://site.test/one-slash.jpg"),
        ("http://bücher.test/ä.jpg", "http://xn--bcher-kva.test/%C3%A4.jpg"),
        ("img/a b.jpg?q=é", "http://site.test/dir/img/a%20b.jpg?q=%C3%A9"),
        ("HTTP://CDN.Test:80/Up.jpg", "http://cdn.test/Up.jpg"),
    ],
    ids=["no-host", "backslashes", "relative-backslashes", "tab-newline", "c0-controls", "scheme-relative",
         "other-scheme-no-slashes", "same-scheme-one-slash", "idna-host", "percent-encoding", "case-and-port"],
)
def test_image_urls_resolve_as_the_whatwg_url_standard_says(src, expected):
    assert pairs(html_rows(f'<img src="{src}" alt="x">')) == [(expected, "x")]


def test_duplicate_pairs_are_kept_once_per_file(tmp_path):
    first = '<img src="a.jpg" alt="Same"><img src="a.jpg" alt="Same"><img src="a.jpg" alt="Other caption">'
    second = '<img src="http://site.test/dir/a.jpg#top" alt=" Same "><img src="b.jpg" alt="Same">'
    path = write_archive(tmp_path / "crawl.warc.gz", [page(SITE, first), page("http://site.test/dir/two.html", second)])
    rows = rows_of(path)
    assert pairs(rows) == [
        ("http://site.test/dir/a.jpg", "Same"),
        ("http://site.test/dir/a.jpg", "Other caption"),
        ("http://site.test/dir/b.jpg", "Same"),
    ]
    assert rows[2].extra["page_url"] == "http://site.test/dir/two.html"


def test_duplicates_are_checked_per_file_not_across_files(tmp_path):
    html = '<img src="a.jpg" alt="Same">'
    one = write_archive(tmp_path / "one.warc.gz", [page(SITE, html)])
    two = write_archive(tmp_path / "two.warc.gz", [page(SITE, html)])
    assert len(rows_of(one)) == len(rows_of(two)) == 1


def test_non_html_records_are_ignored(tmp_path):
    looks_like_html = b'<img src="fake.jpg" alt="inside a non-HTML body">'
    records = [
        request(SITE),
        page("http://site.test/photo.jpg", looks_like_html, content_type="image/jpeg"),
        page("http://site.test/data.json", looks_like_html, content_type="application/json"),
        wat_record(SITE, {"Envelope": {}}),
        page(SITE, '<img src="real.jpg" alt="The real one">', content_type="application/xhtml+xml"),
    ]
    path = write_archive(tmp_path / "crawl.warc.gz", records)
    assert pairs(rows_of(path)) == [("http://site.test/dir/real.jpg", "The real one")]


MALFORMED_PAGE = b"""<html><body><div><p>unclosed <b>tags <i>everywhere
<img src=bare.jpg alt=unquoted>
<script>var s = "<img src='in-script.jpg' alt='not a tag'>";</script>
<style>img[alt="<img src=css.jpg>"] {}</style>
<img src="dup-attr.jpg" src="second.jpg" alt="first wins" alt="no">
<img src = "spaced.jpg" ALT = "Upper case attribute">
< not a tag <<>> </p></div></span></table>
\xff\xfe invalid utf-8 bytes \xc3\x28
<img src="after-garbage.jpg" alt="caf\xc3\xa9 &amp; cr\xc3\xa8me &#233;">
<!-- <img src="commented.jpg" alt="comment"> -->
<img src="unterminated.jpg" alt="the end"""


def test_malformed_html_gives_the_images_a_browser_would_see(tmp_path):
    path = write_archive(tmp_path / "crawl.warc.gz", [page(SITE, MALFORMED_PAGE), page(SITE + "?2", "<img src=z.jpg alt=ok>")])
    assert pairs(rows_of(path)) == [
        ("http://site.test/dir/bare.jpg", "unquoted"),
        ("http://site.test/dir/dup-attr.jpg", "first wins"),
        ("http://site.test/dir/spaced.jpg", "Upper case attribute"),
        ("http://site.test/dir/after-garbage.jpg", "café & crème é"),
        ("http://site.test/dir/z.jpg", "ok"),  # the next page is unaffected
    ]


def test_an_img_tag_split_across_chunks_is_found():
    chunks = ['<p>text</p><img sr', 'c="split.jpg" al', 't="Split tag">']
    rows = list(image_rows_in_html(chunks, SITE))
    assert pairs(rows) == [("http://site.test/dir/split.jpg", "Split tag")]


@pytest.mark.parametrize(
    "html, headers, expected",
    [
        ('<html lang="pt-BR"><img src="a.jpg" alt="x">', [("Content-Language", "de")], ("pt", "pt-BR")),
        ('<html xml:lang="fr"><img src="a.jpg" alt="x">', [], ("fr", "fr")),
        ('<meta http-equiv="Content-Language" content="es"><img src="a.jpg" alt="x">', [("Content-Language", "de")], ("es", "es")),
        ('<html><img src="a.jpg" alt="x">', [("Content-Language", "de-AT")], ("de", "de-AT")),
        ('<html lang="en_us"><img src="a.jpg" alt="x">', [], ("en", "en-US")),
        ('<html lang="iw"><img src="a.jpg" alt="x">', [], ("he", "he")),  # deprecated code, standard form
        ('<html lang="zh-Hant-TW"><img src="a.jpg" alt="x">', [], ("zh", "zh-Hant-TW")),
        # not language tags: the next declaration counts
        ('<html lang="not a tag!"><img src="a.jpg" alt="x">', [], (None, None)),
        ('<meta http-equiv="content-language" content="utf-8"><img src="a.jpg" alt="x">', [], (None, None)),
        ('<meta http-equiv="content-language" content="utf-8"><img src="a.jpg">', [("Content-Language", "nl")], ("nl", "nl")),
        ('<html lang="und"><img src="a.jpg" alt="x">', [("Content-Language", "it")], ("it", "it")),
        ('<html lang="x-klingon"><img src="a.jpg" alt="x">', [], (None, None)),
        # several languages: the HTML spec calls the language unknown
        ('<html><img src="a.jpg" alt="x">', [("Content-Language", "de-AT, en")], (None, None)),
        ('<img src="a.jpg" alt="x">', [], (None, None)),
    ],
)
def test_page_language_as_declared(tmp_path, html, headers, expected):
    path = write_archive(tmp_path / "crawl.warc.gz", [page(SITE, html, headers=headers)])
    assert [(row.extra["page_lang"], row.extra["page_lang_tag"]) for row in rows_of(path)] == [expected]


def encoded(alt, encoding, declaration=""):
    return f'{declaration}<img src="a.jpg" alt="{alt}">'.encode(encoding)


@pytest.mark.parametrize(
    "content_type, html, expected",
    [
        ("text/html; charset=windows-1252", encoded("café", "cp1252"), "café"),
        ("text/html", encoded("café", "iso-8859-15", '<meta charset="iso-8859-15">'), "café"),
        (
            "text/html",
            encoded("日本の猫", "shift_jis", '<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">'),
            "日本の猫",
        ),
        ("text/html; charset=no-such-charset", encoded("café", "utf-8"), "café"),
        ("text/html", encoded("café", "utf-16"), "café"),  # Python's utf-16 writes a byte-order mark
        ("text/html; charset=utf\x00-8", encoded("café", "utf-8"), "café"),  # found by the fuzzer
        ("text/html", encoded("café", "utf-8", '<meta charset="base64">'), "café"),  # Python codecs, not encodings
        ("text/html; charset=rot13", encoded("café", "utf-8"), "café"),
    ],
    ids=["http-charset", "meta-charset", "meta-http-equiv", "unknown-charset-is-utf8", "utf16-bom",
         "nul-in-charset", "bytes-codec", "text-transform-codec"],
)
def test_page_encoding(tmp_path, content_type, html, expected):
    path = write_archive(tmp_path / "crawl.warc.gz", [page(SITE, html, content_type=content_type)])
    assert [row.caption for row in rows_of(path)] == [expected]


def test_surrounding_text_takes_words_on_both_sides():
    html = """<p>one two three four</p><img src="a.jpg" alt="A">
    <script>skipped words here</script><p>five six seven</p><img src="b.jpg" alt="B"><p>eight</p>"""
    rows = html_rows(html, surrounding_words=2)
    assert [row.extra["surrounding_text"] for row in rows] == ["three four five six", "six seven eight"]
    assert pairs(rows) == [("http://site.test/dir/a.jpg", "A"), ("http://site.test/dir/b.jpg", "B")]


def test_negative_surrounding_words_is_a_parameter_error():
    from pipeline.core.params import ParamError, build

    with pytest.raises(ParamError, match="surrounding_words"):
        build(CrawlParams, {"surrounding_words": -1}, "crawl")
    assert build(CrawlParams, {"surrounding_words": "5", "skip_empty_alt": "true"}, "crawl") == CrawlParams(5, True)


def test_surrounding_text_is_absent_unless_asked_for():
    [row] = html_rows('<p>words</p><img src="a.jpg" alt="A">')
    assert "surrounding_text" not in row.extra


def test_page_beyond_the_size_cap_is_cut_and_the_next_record_still_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(crawl_html, "MAX_PAGE_BYTES", 10_000)
    big = '<img src="early.jpg" alt="early">' + "x" * 20_000 + '<img src="late.jpg" alt="late">'
    records = [page(SITE, big), page("http://site.test/next.html", '<img src="n.jpg" alt="next">')]
    path = write_archive(tmp_path / "crawl.warc.gz", records)
    rows, tally = tally_of(path)
    assert pairs(rows) == [("http://site.test/dir/early.jpg", "early"), ("http://site.test/n.jpg", "next")]
    assert tally["pages_cut_at_size_cap"] == 1


@pytest.mark.parametrize("name", ["crawl.warc.gz", "crawl.warc"])
def test_truncated_file_is_an_input_error(tmp_path, name):
    html = '<img src="a.jpg" alt="x">' + "padding " * 2000
    whole = write_archive(tmp_path / f"whole-{name}", [page(SITE, html), page(SITE + "?2", html)])
    cut = tmp_path / name
    cut.write_bytes(whole.read_bytes()[:-500])
    with pytest.raises(InputError, match=name):
        rows_of(cut)


def test_a_file_that_is_not_warc_is_an_input_error(tmp_path):
    path = tmp_path / "notes.warc.gz"
    path.write_bytes(gzip.compress(b"just some text, no WARC records here\n" * 10))
    with pytest.raises(InputError, match="not a WARC file"):
        rows_of(path)
    with pytest.raises(InputError):
        check_input(str(path), "warc", "url", "caption")


def test_a_response_record_without_target_uri_is_an_input_error(tmp_path):
    """Found by tests/fuzz/fuzz_crawl.py: warcio itself fails with AttributeError on such a record."""
    body = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<img src=a.jpg alt=x>"
    record = b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: %d\r\n\r\n%s\r\n\r\n" % (len(body), body)
    path = tmp_path / "no-uri.warc"
    path.write_bytes(record)
    with pytest.raises(InputError, match="no-uri.warc: not a readable WARC/WAT file"):
        rows_of(path)


def test_check_input_reads_only_the_first_record(tmp_path):
    path = write_archive(tmp_path / "damaged.warc", [page(SITE, '<img src="a.jpg" alt="x">')])
    with open(path, "ab") as out:
        out.write(b"\x00\x01 not a record " * 100)
    check_input(str(path), "warc", "url", "caption")  # the damage is past the first record
    with pytest.raises(InputError, match="not a readable WARC"):
        rows_of(path)


def test_empty_crawl_file_has_no_rows(tmp_path):
    path = tmp_path / "empty.warc.gz"
    path.write_bytes(gzip.compress(b""))
    assert rows_of(path) == []
    check_input(str(path), "warc", "url", "caption")


# --------------------------------------------------------------------------- WAT


WAT_LINKS = [
    {"path": "A@/href", "url": "/about", "text": "About us"},
    {"path": "IMG@/src", "url": "img/a.jpg", "alt": "A cat on a mat"},
    {"path": "IMG@/src", "url": "https://cdn.test/b.png", "alt": "  A dog\n in fog "},
    {"path": "IMG@/src", "url": "data:image/gif;base64,R0lGOD", "alt": "inline"},
    {"path": "IMG@/src", "url": "img/no-alt.jpg"},
    {"path": "IMG@/src", "url": "img/a.jpg", "alt": "A cat on a mat"},
    {"path": "LINK@/href", "url": "style.css", "rel": "stylesheet"},
    {"path": "IMG@/src", "alt": "no url"},
    {"path": "IMG@/src", "url": 42, "alt": "url is not text"},
    "not a link object",
]


@pytest.mark.parametrize("name", ["CC-MAIN-0.warc.wat.gz", "links.wat"])
def test_wat_image_links(tmp_path, name):
    request_metadata = {"Envelope": {"WARC-Header-Metadata": {"WARC-Type": "request"}, "Payload-Metadata": {}}}
    records = [
        wat_record(SITE, request_metadata),  # no HTML-Metadata: not a page
        wat_record(SITE, wat_document(SITE, WAT_LINKS, headers={"content-language": "nl"})),
    ]
    rows = rows_of(write_archive(tmp_path / name, records))
    assert pairs(rows) == [
        ("http://site.test/dir/img/a.jpg", "A cat on a mat"),
        ("https://cdn.test/b.png", "A dog in fog"),
        ("http://site.test/dir/img/no-alt.jpg", None),
    ]
    assert all(row.extra == {"page_url": SITE, "page_lang": "nl", "page_lang_tag": "nl"} for row in rows)


def test_wat_base_and_meta_language(tmp_path):
    head = {
        "Base": "http://static.test/assets/",
        "Metas": [{"name": "viewport", "content": "x"}, {"http-equiv": "content-language", "content": "it"}],
    }
    document = wat_document(SITE, [{"path": "IMG@/src", "url": "a.jpg", "alt": "Pizza"}], head=head)
    rows = rows_of(write_archive(tmp_path / "x.wat.gz", [wat_record(SITE, document)]), surrounding_words=3)
    assert pairs(rows) == [("http://static.test/assets/a.jpg", "Pizza")]
    assert rows[0].extra == {"page_url": SITE, "page_lang": "it", "page_lang_tag": "it", "surrounding_text": None}


def test_malformed_wat_record_is_one_error_row_and_reading_goes_on(tmp_path):
    good = wat_document(SITE, [{"path": "IMG@/src", "url": "a.jpg", "alt": "Good"}])
    records = [
        wat_record("http://broken.test/", b'{"Envelope": {"Payload-Metadata": '),
        wat_record("http://list.test/", b"[1, 2, 3]"),
        wat_record("http://deep.test/", b"[" * 100_000),
        wat_record(SITE, good),
    ]
    rows = rows_of(write_archive(tmp_path / "x.wat.gz", records))
    assert [(row.error, row.extra.get("page_url")) for row in rows] == [
        (MALFORMED_ROW, "http://broken.test/"),
        (MALFORMED_ROW, "http://list.test/"),
        (MALFORMED_ROW, "http://deep.test/"),
        (None, SITE),
    ]
    assert rows[3].url == "http://site.test/dir/a.jpg"


def test_wat_lone_surrogate_in_alt_becomes_valid_text(tmp_path):
    body = json.dumps(wat_document(SITE, [{"path": "IMG@/src", "url": "a.jpg", "alt": "bad"}]))
    body = body.replace('"bad"', '"bad \\ud800 escape"').encode()
    [row] = rows_of(write_archive(tmp_path / "x.wat.gz", [wat_record(SITE, body)]))
    row.caption.encode("utf-8")  # would raise on a lone surrogate
    assert row.caption.startswith("bad ") and row.caption.endswith(" escape")


def test_wat_html_lang_meta_gives_the_page_language(tmp_path):
    head = {"Metas": [{"name": "HTML@/lang", "content": "de-DE"}, {"http-equiv": "content-language", "content": "fr"}]}
    document = wat_document(SITE, [img("a.jpg", "Ein Hund")], head=head, headers={"Content-Language": "en"})
    [row] = rows_of(write_archive(tmp_path / "x.wat.gz", [wat_record(SITE, document)]))
    assert (row.extra["page_lang"], row.extra["page_lang_tag"]) == ("de", "de-DE")


def test_wat_keeps_the_last_base_so_it_can_differ_from_the_warc(tmp_path):
    """A documented difference: the WAT generator overwrites Base with each <base href>; browsers use the first."""
    html = '<base href="http://first.test/"><base href="http://last.test/"><img src="a.jpg" alt="x">'
    warc = write_archive(tmp_path / "x.warc.gz", [page(SITE, html)])
    wat_page = wat_document(SITE, [img("a.jpg", "x")], head={"Base": "http://last.test/"})
    wat = write_archive(tmp_path / "x.wat.gz", [wat_record(SITE, wat_page)])
    assert pairs(rows_of(warc)) == [("http://first.test/a.jpg", "x")]
    assert pairs(rows_of(wat)) == [("http://last.test/a.jpg", "x")]


# --------------------------------------------------------------------------- the same pages as WARC and as WAT


SAME_PAGE_ROWS = [
    # (url, caption, page_lang, page_lang_tag)
    ("http://news.example.cn/img/cat.jpg", "一只猫", "zh", "zh-CN"),
    ("https://www.example.de/tiere/hund.jpg", None, "de", "de-DE"),
    ("https://www.example.de/tiere/logo.png", "", "de", "de-DE"),
    ("https://www.example.de/tiere/katze.jpg", "Eine Katze", "de", "de-DE"),
    ("http://www.example.nl/fiets.jpg", "Een fiets bij de gracht", "nl", "nl"),
    ("https://cdn.example.com/real.jpg", "An absolute photo", "en", "en"),
    ("http://www.example.com/gallery/sunset.jpg", "A sunset over the sea", "en", "en"),
    ("https://nohost.jpg/", "Three slashes", "en", "en-GB"),
    ("http://cdn.example.com/img/back.jpg", "Backslashes", "en", "en-GB"),
    ("http://www.example.org/dir/img/tabbed.jpg", "A tab inside", "en", "en-GB"),
    ("http://www.example.org/dir/img/c0.jpg", "Control characters around", "en", "en-GB"),
    ("http://xn--bcher-kva.example/%C3%A4.jpg", "Unicode host", "en", "en-GB"),
    ("http://www.example.org/dir/img/a%20b.jpg", "A space inside", "en", "en-GB"),
    ("https://cdn.example.com/x.jpg", "Other scheme, no slashes", "en", "en-GB"),
    ("http://www.example.org/one-slash.jpg", "Same scheme, one slash", "en", "en-GB"),
    ("http://www.example.it/a.jpg", "Una sedia rossa", "it", "it-IT"),
    ("http://www.example.it/b.jpg", "", "it", "it-IT"),
    ("http://cdn.example.it/Up.jpg", "Maiuscole", "it", "it-IT"),
    ("https://shop.example.com/p/1.jpg", "Une chaise en bois", "fr", "fr"),
]
# Every image link of SAME_PAGES, by what became of it (the WARC and the WAT must agree).
SAME_PAGE_TALLY = {
    "links": 28, "rows": 19, "link/not_http": 3, "link/fragment_only": 2, "link/empty_src": 2,
    "link/unparsable": 1, "link/duplicate": 1,
}


def same_page_files(tmp_path):
    warc = write_archive(tmp_path / "same.warc.gz", [request(p.url) for p in SAME_PAGES[:1]] + [p.warc_record() for p in SAME_PAGES])
    wat = write_archive(tmp_path / "same.warc.wat.gz", [p.wat_record() for p in SAME_PAGES])
    return warc, wat


def described(rows):
    return [(row.url, row.caption, row.extra["page_lang"], row.extra["page_lang_tag"]) for row in rows]


def tally_of(path, **params):
    tally = Tally()
    rows = list(read_rows(str(path), detect_format(str(path)), crawl_params=CrawlParams(**params), crawl_tally=tally))
    return rows, tally


def test_the_same_pages_give_the_same_rows_from_warc_and_wat(tmp_path):
    warc, wat = same_page_files(tmp_path)
    (warc_rows, warc_tally), (wat_rows, wat_tally) = tally_of(warc), tally_of(wat)
    assert described(warc_rows) == described(wat_rows) == SAME_PAGE_ROWS
    assert [row.extra["page_url"] for row in warc_rows] == [row.extra["page_url"] for row in wat_rows]
    links = {name: count for name, count in warc_tally.items() if name.startswith(("link", "rows"))}
    assert links == {name: count for name, count in wat_tally.items() if name.startswith(("link", "rows"))}
    assert links == SAME_PAGE_TALLY


def test_every_record_and_link_is_counted_once(tmp_path):
    warc, wat = same_page_files(tmp_path)
    for path, records in [(warc, {"record/page": 8, "record/not_page": 2}), (wat, {"record/page": 8, "record/not_page": 1})]:
        _, tally = tally_of(path)
        assert {name: count for name, count in tally.items() if name.startswith("record/")} == records
        assert tally["records"] == sum(records.values())  # the warcinfo record and the request are not pages
        assert tally["links"] == tally["rows"] + sum(n for name, n in tally.items() if name.startswith("link/"))


def test_title_is_a_caption_fallback_only_when_asked_for(tmp_path):
    warc, wat = same_page_files(tmp_path)
    for path in (warc, wat):
        captions = {row.url.rsplit("/", 1)[-1]: row.caption for row in rows_of(path) if "example.de" in row.url}
        assert captions == {"hund.jpg": None, "logo.png": "", "katze.jpg": "Eine Katze"}
        with_title = {row.url.rsplit("/", 1)[-1]: row.caption for row in rows_of(path, title_fallback=True) if "example.de" in row.url}
        assert with_title == {"hund.jpg": "Ein Hund im Schnee", "logo.png": "Startseite", "katze.jpg": "Eine Katze"}
        laion_mode = [row.url for row in rows_of(path, title_fallback=True, skip_empty_alt=True) if "example.de" in row.url]
        assert len(laion_mode) == 3  # the title counts as a caption for skip_empty_alt too


def test_title_fallback_is_a_crawl_parameter():
    from pipeline.core.params import build

    assert build(CrawlParams, {"title_fallback": "true"}, "crawl").title_fallback is True
    assert CrawlParams().title_fallback is False


# --------------------------------------------------------------------------- end to end


def jpeg(size, colour):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def test_curate_run_on_a_warc_of_loopback_pages(tmp_path):
    web_root = tmp_path / "web"
    (web_root / "img").mkdir(parents=True)
    (web_root / "img" / "red.jpg").write_bytes(jpeg((120, 90), "red"))
    (web_root / "img" / "green.jpg").write_bytes(jpeg((90, 120), "green"))
    (web_root / "img" / "tiny.jpg").write_bytes(jpeg((8, 8), "blue"))
    with LocalWeb(web_root) as web:
        first = """<html lang="en"><body>
            <img src="img/red.jpg" alt="A red square on a plain background">
            <img src="img/missing.jpg" alt="A picture that is not there">
            <img src="data:image/gif;base64,R0lGOD" alt="inline, never a row">
            <img src="img/red.jpg" alt="A red square on a plain background"></body></html>"""
        second = f"""<html><head><base href="{web.url('img/')}"></head><body>
            <img src="green.jpg" alt="A green square on a plain background">
            <img src="tiny.jpg" alt="A tiny blue image that is too small">
            <img src="green.jpg" alt="x"></body></html>"""
        warc = write_archive(tmp_path / "crawl.warc.gz", [page(web.url("index.html"), first), page(web.url("p/2.html"), second)])
        out = tmp_path / "out"
        args = [
            "run", "--recipe", "manifests/local-sample.yaml", "--input", str(warc), "--output", str(out),
            "--allow-private-network", "--direct_num_workers=1",
        ]
        assert main(args) == 0

    audit = json.loads((out / "report" / "audit.json").read_text())
    counts = audit["counts"]
    assert counts["input"] == 5  # the data: URI and the repeated pair are not rows
    assert counts["kept"] == 2
    assert counts["rejected_by_stage"]["download"] == {"http_404": 1}
    assert counts["rejected_by_stage"]["caption"] == {"caption_too_short": 1}
    assert counts["rejected_by_stage"]["resolution"] == {"too_small": 1}
    kept = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("shards/*.parquet"))]).to_pylist()
    by_caption = {row["caption"]: row for row in kept}
    red = by_caption["A red square on a plain background"]
    assert red["url"] == web.url("img/red.jpg")
    assert (red["page_url"], red["page_lang"]) == (web.url("index.html"), "en")
    green = by_caption["A green square on a plain background"]
    assert (green["page_url"], green["page_lang"]) == (web.url("p/2.html"), None)


def test_reading_a_crawl_file_reports_its_tally_as_beam_counters(tmp_path):
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipeline.engine.read_inputs import ReadInputFile

    warc, _ = same_page_files(tmp_path)
    pipeline = beam.Pipeline(runner=FnApiRunner())
    _ = pipeline | beam.Create([(0, str(warc))]) | beam.ParDo(ReadInputFile(None, "url", "caption", CrawlParams()))
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("crawl"))["counters"]
    found = {counter.key.metric.name: counter.committed for counter in counters}
    assert {name: found.get(name) for name in SAME_PAGE_TALLY} == SAME_PAGE_TALLY
    assert found["records"] == 10


# --------------------------------------------------------------------------- fuzzing (issue 11)


@pytest.mark.slow
def test_fuzzing_the_reader_finds_nothing_in_12_seconds(tmp_path):
    """tests/fuzz/fuzz_crawl.py with atheris, bounded: its invariants hold on every input it makes."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("atheris")
    harness = Path(__file__).parent / "fuzz" / "fuzz_crawl.py"
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    artifacts.mkdir()
    write_fuzz_seeds(corpus)
    fuzz = subprocess.run(
        fresh_process([sys.executable, str(harness), str(corpus), "-max_total_time=12", "-rss_limit_mb=2048",
                       f"-artifact_prefix={artifacts}/"]),
        capture_output=True, timeout=120,
    )
    report = fuzz.stderr.decode("utf-8", "replace")
    assert fuzz.returncode == 0, report[-3000:]
    assert "Done" in report and not list(artifacts.iterdir())


def test_the_cc2dataset_difference_table_is_current(tmp_path):
    """benchmarks/README.md's table of pairs only one side extracts is what the code gives today."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "crawl_vs_cc2dataset.py"
    spec = importlib.util.spec_from_file_location("crawl_vs_cc2dataset", script)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.table(benchmark.compare(tmp_path)) == benchmark.readme_table()
