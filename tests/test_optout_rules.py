"""The opt-out list and the signal parsers (no network)."""
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from pipeline.media.imaging import ResizeParams, process_image
from pipeline.media.optout.c2pa_manifests import c2pa_store_disallows_training
from pipeline.media.optout.phash import phash_of_image
from pipeline.media.optout.reasons import RULE_FIELD
from pipeline.media.optout.rule_list import OptOutList, OptOutListError, PhashMatch, Rule, load_optout_list, parse_rule
from pipeline.media.optout.tdmrep import parse_tdmrep_json, tdm_reservation, tdmrep_rule_for
from pipeline.media.optout.urls import normalize_url
from pipeline.media.optout.x_robots_tag import x_robots_tag_disallows
from pipeline.tools.report_optout import optout_report

SHA = "ab" * 32


def load_text(tmp_path, text, name="list.txt"):
    path = tmp_path / name
    path.write_text(text)
    return load_optout_list(str(path))


# ------------------------------------------------------------ URL normalisation


@pytest.mark.parametrize(
    "url, expected",
    [
        ("HTTP://Example.COM/a", "http://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("https://example.com:8443/a", "https://example.com:8443/a"),
        ("http://example.com/a#part", "http://example.com/a"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com./a", "http://example.com/a"),
        ("http://user:secret@example.com/a", "http://example.com/a"),
        ("http://example.com/%7euser/%41", "http://example.com/~user/A"),  # unreserved escapes decoded
        ("http://example.com/a%2fb%3f", "http://example.com/a%2Fb%3F"),  # reserved ones kept, upper-cased
        ("http://example.com/caf\u00e9 x", "http://example.com/caf%C3%A9%20x"),
        ("http://example.com/?q=%7e&r=1", "http://example.com/?q=~&r=1"),
        ("http://B\u00fccher.de/", "http://xn--bcher-kva.de/"),
        ("http://[::1]:80/x", "http://[::1]/x"),
    ],
)
def test_normalize_url(url, expected):
    assert normalize_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://example.com/a", "example.com/a", "http:///a", "http://example.com:99999/", ""])
def test_normalize_url_rejects_non_http_urls(url):
    assert normalize_url(url) is None


def test_equivalent_spellings_match_a_url_rule():
    optout = OptOutList([parse_rule("url", "https://example.com/a b.jpg")])
    assert optout.match_url("HTTPS://EXAMPLE.com:443/a%20b.jpg#x") == Rule("url", "https://example.com/a%20b.jpg")
    assert optout.match_url("https://example.com/a%20b.jpg?x=1") is None
    assert optout.match_url("http://example.com/a%20b.jpg") is None  # another scheme is another URL


# ------------------------------------------------------------ matching


def test_domain_rule_matches_subdomains_but_not_lookalikes():
    optout = OptOutList([parse_rule("domain", "Example.com")])
    assert optout.match_url("http://example.com/x") == Rule("domain", "example.com")
    assert optout.match_url("https://img.cdn.example.com/x") == Rule("domain", "example.com")
    assert optout.match_url("https://notexample.com/x") is None
    assert optout.match_url("https://example.com.evil.org/x") is None


def test_subdomain_rule_does_not_match_its_parent():
    optout = OptOutList([parse_rule("domain", "img.example.com")])
    assert optout.match_url("http://a.img.example.com/") == Rule("domain", "img.example.com")
    assert optout.match_url("http://example.com/") is None


def test_ip_address_domain_matches_exactly():
    optout = OptOutList([parse_rule("domain", "10.1.2.3")])
    assert optout.match_url("http://10.1.2.3:8080/a") == Rule("domain", "10.1.2.3")
    assert optout.match_url("http://110.1.2.3/a") is None


def test_prefix_rule_is_a_string_prefix_of_the_normalised_url():
    optout = OptOutList([parse_rule("prefix", "HTTPS://Example.com/Gallery/")])
    assert optout.match_url("https://example.com/Gallery/2024/a.jpg") == Rule("prefix", "https://example.com/Gallery/")
    assert optout.match_url("https://example.com/gallery/a.jpg") is None  # paths are case-sensitive
    assert optout.match_url("https://example.com/Gallery") is None
    assert optout.match_url("https://other.com/Gallery/a.jpg") is None


def test_url_rules_win_over_prefix_and_domain():
    optout = OptOutList([
        parse_rule("domain", "example.com"),
        parse_rule("prefix", "https://example.com/a/"),
        parse_rule("url", "https://example.com/a/b.jpg"),
    ])
    assert optout.match_url("https://example.com/a/b.jpg").kind == "url"
    assert optout.match_url("https://example.com/a/c.jpg").kind == "prefix"
    assert optout.match_url("https://example.com/z.jpg").kind == "domain"


def test_sha256_and_phash_matching():
    optout = OptOutList([parse_rule("sha256", SHA.upper()), parse_rule("phash", "ffff0000ffff0000")])
    assert optout.match_sha256(SHA) == Rule("sha256", SHA)
    assert optout.match_sha256("cd" * 32) is None
    near = 0xFFFF0000FFFF0000 ^ 0b111  # three bits differ
    assert optout.match_phash(near, 3) == PhashMatch(Rule("phash", "ffff0000ffff0000"), 3)
    assert optout.match_phash(near, 2) is None


def test_an_empty_list_matches_nothing():
    optout = OptOutList()
    assert optout.match_url("http://example.com/") is None
    assert optout.match_phash(0, 64) is None and not optout.has_phash


# ------------------------------------------------------------ list files


def test_text_list_with_every_kind_comments_and_blank_lines(tmp_path):
    optout = load_text(tmp_path, f"""
# creators who asked to be left out
domain:example.com
  url: https://Example.org/a.jpg
prefix:https://example.net/gallery/

sha256:{SHA}
phash:FFFF0000FFFF0000
""")
    assert optout.counts() == {"domain": 1, "url": 1, "prefix": 1, "sha256": 1, "phash": 1}
    assert optout.match_url("https://example.org/a.jpg") == Rule("url", "https://example.org/a.jpg")
    assert optout.match_sha256(SHA)


def test_bad_lines_are_reported_with_their_line_numbers(tmp_path):
    with pytest.raises(OptOutListError) as err:
        load_text(tmp_path, "domain:example.com\ncolour:red\n\nurl:example.com/a\njust-text\nsha256:xyz\ndomain:https://a.com/\nphash:\n")
    message = str(err.value)
    assert "6 bad opt-out rule(s)" in message
    for expected in ("list.txt:2: unknown kind 'colour'", "list.txt:4:", "list.txt:5:", "list.txt:6: sha256 must be 64 hex",
                     "list.txt:7: domain", "list.txt:8: empty phash"):
        assert expected in message
    assert "list.txt:1" not in message


def test_long_error_lists_are_shortened(tmp_path):
    with pytest.raises(OptOutListError, match=r"(?s)25 bad .*list.txt:1: expected kind:value, got 'nope'.*and 15 more"):
        load_text(tmp_path, "nope\n" * 25)


def test_csv_list(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text(f"kind,value\ndomain,example.com\nsha256,{SHA}\n")
    optout = load_optout_list(str(path))
    assert optout.counts() == {"domain": 1, "sha256": 1}
    path.write_text("kind,value\ndomain,example.com\nwhat,ever\n")
    with pytest.raises(OptOutListError, match=r"list.csv:3: unknown kind 'what'"):
        load_optout_list(str(path))
    path.write_text("type,value\ndomain,example.com\n")
    with pytest.raises(OptOutListError, match="missing column"):
        load_optout_list(str(path))


def test_parquet_list(tmp_path):
    path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"kind": ["url", "prefix"], "value": ["https://a.com/x", "https://b.com/"]}), path)
    assert load_optout_list(str(path)).counts() == {"url": 1, "prefix": 1}
    pq.write_table(pa.table({"kind": ["url"], "value": ["not a url"]}), path)
    with pytest.raises(OptOutListError, match="row 1: 'not a url' is not an absolute http"):
        load_optout_list(str(path))


def test_missing_and_binary_lists_fail_clearly(tmp_path):
    with pytest.raises(OptOutListError, match="cannot read the opt-out list"):
        load_optout_list(str(tmp_path / "missing.txt"))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(OptOutListError, match="not UTF-8"):
        load_optout_list(str(tmp_path / "binary.txt"))


# ------------------------------------------------------------ X-Robots-Tag


@pytest.mark.parametrize(
    "value, expected",
    [
        ("noai", "noai"),
        ("index, follow, NoImageAI", "noimageai"),
        ("noindex", "noindex"),
        ("none", "none"),
        ("curate: noai", "noai"),
        ("CURATE: nofollow, noai", "noai"),
        ("otherbot: noai", None),
        ("otherbot: noai, curate: noindex", "noindex"),
        ("unavailable_after: 25 Jun 2010 15:00:00 PST, noai", "noai"),
        ("index, follow", None),
        ("", None),
        (None, None),
    ],
)
def test_x_robots_tag(value, expected):
    assert x_robots_tag_disallows(value, "curate") == expected


# ------------------------------------------------------------ TDMRep


def test_tdmrep_first_matching_location_wins():
    body = json.dumps([
        {"location": "/open/", "tdm-reservation": 0},
        {"location": "/", "tdm-reservation": 1, "tdm-policy": "https://example.com/policy.json"},
    ]).encode()
    parsed = parse_tdmrep_json(body)
    assert tdmrep_rule_for(parsed, "https://example.com/open/a.jpg").reservation == 0
    assert tdmrep_rule_for(parsed, "https://example.com/closed/a.jpg").reservation == 1


@pytest.mark.parametrize(
    "location, path, matches",
    [
        ("/images/", "/images/a.jpg", True),
        ("/images/", "/Images/a.jpg", False),  # case-sensitive
        ("/*.png", "/x/y.png", True),
        ("/*.png$", "/x/y.png.jpg", False),
        ("/exact$", "/exact", True),
        ("/exact$", "/exact/more", False),
        ("/a%7eb/", "/a~b/c.jpg", True),  # escaped unreserved characters compare decoded
    ],
)
def test_tdmrep_location_patterns(location, path, matches):
    parsed = parse_tdmrep_json(json.dumps([{"location": location, "tdm-reservation": 1}]).encode())
    assert (tdmrep_rule_for(parsed, f"https://example.com{path}") is not None) == matches


@pytest.mark.parametrize("body", [b"<html>not found</html>", b"{}", b'{"location": "/"}', b"", None])
def test_tdmrep_invalid_files_reserve_nothing(body):
    assert parse_tdmrep_json(body) == []


def test_tdmrep_skips_entries_with_protocol_errors():
    body = json.dumps([{"location": "/", "tdm-reservation": 2}, {"location": 5, "tdm-reservation": 1},
                       {"location": "/b/", "tdm-reservation": "1"}]).encode()
    assert [(r.location, r.reservation) for r in parse_tdmrep_json(body)] == [("/b/", 1)]


@pytest.mark.parametrize("value, expected", [("1", 1), (" 0 ", 0), (1, 1), ("2", None), ("yes", None), (None, None)])
def test_tdm_reservation_values(value, expected):
    assert tdm_reservation(value) == expected


# ------------------------------------------------------------ C2PA


def test_c2pa_store_training_mining():
    def store(entries, label="c2pa.training-mining"):
        return {"manifests": {"m": {"assertions": [{"label": "c2pa.actions", "data": {}},
                                                    {"label": label, "data": {"entries": entries}}]}}}

    assert c2pa_store_disallows_training(store({"c2pa.ai_training": {"use": "notAllowed"}})) == "c2pa.ai_training"
    assert c2pa_store_disallows_training(
        store({"cawg.data_mining": {"use": "notAllowed"}}, "cawg.training-mining.v2__1")) == "cawg.data_mining"
    assert c2pa_store_disallows_training(store({"c2pa.ai_training": {"use": "allowed"}})) is None
    assert c2pa_store_disallows_training(store({"c2pa.ai_inference": {"use": "notAllowed"}})) is None
    assert c2pa_store_disallows_training(store({"c2pa.ai_training": {"use": "notAllowed"}}, "c2pa.other")) is None
    assert c2pa_store_disallows_training({}) is None


# ------------------------------------------------------------ pHash of stored images


def picture(size, seed=0):
    """A photo-like image: smooth shapes, not a flat colour (pHash needs structure)."""
    img = Image.new("RGB", size, (40 + seed * 50 % 200, 90, 160))
    draw = ImageDraw.Draw(img)
    width, height = size
    for i in range(6):
        x, y = (i * 37 + seed * 13) % width, (i * 53 + seed * 29) % height
        draw.ellipse((x, y, x + width // 3, y + height // 3), fill=((i * 70 + seed * 40) % 255, (i * 30) % 255, 200 - i * 20))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return out.getvalue()


def creator_phash(data):
    import imagehash

    return int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def distance(a, b):
    return bin(a ^ b).count("1")


@pytest.mark.parametrize("mode", ["border", "keep_ratio", "no"])
def test_stored_image_phash_is_close_to_the_creators(mode):
    original = picture((640, 400), seed=3)
    stored = process_image(original, ResizeParams(image_size=256, resize_mode=mode))
    phash = phash_of_image(stored.data, (stored.original_width, stored.original_height))
    assert distance(phash, creator_phash(original)) <= 4


def test_border_padding_must_be_removed_to_match():
    original = picture((640, 400), seed=5)
    stored = process_image(original, ResizeParams(image_size=256, resize_mode="border"))
    unpadded = phash_of_image(stored.data, (640, 400))
    padded = phash_of_image(stored.data, None)  # without the original size nothing is cropped
    assert distance(unpadded, creator_phash(original)) < distance(padded, creator_phash(original))
    assert distance(padded, creator_phash(original)) > 4


def test_center_cropped_images_are_hashed_whole():
    original = picture((640, 400), seed=7)
    stored = process_image(original, ResizeParams(image_size=256, resize_mode="center_crop"))
    whole = phash_of_image(stored.data, None)
    assert phash_of_image(stored.data, (640, 400)) == whole  # no white bars: nothing cropped


def test_different_pictures_are_far_apart():
    assert distance(creator_phash(picture((300, 300), 1)), creator_phash(picture((300, 300), 2))) > 8


# ------------------------------------------------------------ report


def test_optout_report_counts_by_reason_rule_kind_and_domain():
    def row(url, reason, stage="optout", rule=None):
        return {"url": url, "stage": stage, "reason": reason, "fields": json.dumps({RULE_FIELD: rule} if rule else {})}

    rows = [
        row("https://a.example.com/1.jpg", "optout_list", rule="domain:example.com"),
        row("https://a.example.com/2.jpg", "optout_robots_txt"),
        row("https://a.example.com/3.jpg", "optout_list", "takedown", "sha256:" + SHA),
        row("http://b.org/1.jpg", "optout_tdmrep"),
        row("http://b.org/2.jpg", "too_small", "resolution"),
        row("not a url", "optout_c2pa"),
    ]
    report = optout_report(rows, top=2)
    assert report["total"] == 5
    assert report["by_reason"] == {"optout_list": 2, "optout_robots_txt": 1, "optout_tdmrep": 1, "optout_c2pa": 1}
    assert report["by_stage"] == {"optout": 4, "takedown": 1}
    assert report["by_list_rule_kind"] == {"domain": 1, "sha256": 1}
    assert report["domains"] == 3
    assert report["top_domains"][0] == {
        "domain": "a.example.com", "count": 3, "by_reason": {"optout_list": 2, "optout_robots_txt": 1}}
    assert [d["domain"] for d in report["top_domains"]] == ["a.example.com", "(no host)"]
