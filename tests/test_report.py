"""The audit report over a small output folder written with the real writers and audit."""
import argparse
import html.parser
import io
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.engine import audit
from pipeline.tools.report_build import ReportError, add_report_command, write_reports
from pipeline.core.records import Reject, Sample
from pipeline.engine.writers import OutputParams, write_rejects, write_shard

RECIPE = {
    "name": "report-test",
    "output": {"format": "webdataset", "samples_per_shard": 10, "shard_digits": 5},
    "stages": [
        {"optout": {}},
        {"caption": {"min_chars": 5, "max_chars": 1000, "min_words": 2}},
        {"resolution": {"min_side": 100, "max_aspect_ratio": 10.0}},
        {"bias_audit": {"terms_path": None}},
        {"clip_score": {"threshold": 0.28}},
        {"nsfw": {"threshold": 0.5, "action": "tag"}},
        {"dedup_phash": {}},
    ],
}
# The steps in the order they run (caption-only stages before the download).
RUN_ORDER = ["read", "optout", "caption", "download", "resolution", "bias_audit", "clip_score", "nsfw", "dedup_phash"]
# The shape of pipeline/dedup/cluster_report.py's report.
DEDUP_REPORT = {
    "candidates": 2, "clusters": 1, "dropped": 1, "cluster_size_histogram": {"2": 1, "3-4": 0},
    "largest_clusters": [{"size": 2, "kept": "000000003", "example_duplicates": ["000000111"]}],
}
LONG_CAPTION = "cheap shoes best price " * 40

# (caption, domain, clip_score, nsfw_score, lang, perceived, original size)
KEPT = [
    ("A woman cooking pasta in a bright kitchen", "a.example.com", 0.31, 0.01, "en", "gender/female", (640, 480)),
    ("A man writing code on a laptop", "a.example.com", 0.35, 0.02, "en", "gender/male", (300, 600)),
    ("Two men playing football in the park", "b.example.com", 0.29, 0.20, "en", "gender/male", (800, 800)),
    ("A red bicycle leaning on a wall", "b.example.com", 0.40, 0.00, "en", "gender/no_person", (1024, 768)),
    ("Une femme lisant un livre au soleil", "c.example.fr", 0.30, 0.03, "fr", "gender/female", (500, 500)),
    ("A girl and her grandmother baking bread", "a.example.com", 0.33, 0.05, "en", "gender/female", (90, 1200)),
    ("Mountain lake at sunrise", "www.d.example.org", 0.28, 0.60, "en", "gender/no_person", (4000, 3000)),
    ("A nurse checking a patient's pulse", "a.example.com", 0.32, 0.04, "en", "gender/female", (640, 640)),
]
# (stage, reason, caption, domain, fields)
REJECTED = [
    ("optout", "optout_robots_txt", "A man at a market stall", "blocked.example.org", {"optout_rule": "robots.txt"}),
    ("optout", "optout_robots_txt", "Tulips in a vase", "blocked.example.org", {"optout_rule": "robots.txt"}),
    ("optout", "optout_list", "Harbour at dusk", "other.example.net", {"optout_rule": "domain:other.example.net"}),
    ("optout", "optout_tdmrep", "A woman surfing a wave", "blocked.example.org", {"optout_rule": "tdm-reservation"}),
    ("download", "http_404", "A woman cooking dinner for her family", "a.example.com", {}),
    ("download", "http_404", "Snowy forest path", "e.example.com", {}),
    ("caption", "caption_is_placeholder", "<script>alert(1)</script>", "a.example.com", {}),
    ("caption", "caption_too_long", LONG_CAPTION, "shop.example.com", {}),
    ("clip_score", "low_clip_score", "A woman in the kitchen", "a.example.com",
     {"clip_score": 0.12, "bias_perceived": "gender/female", "original_width": 400, "original_height": 300}),
    ("clip_score", "low_clip_score", "Woman baking a cake", "b.example.com",
     {"clip_score": 0.20, "bias_perceived": "gender/female", "original_width": 200, "original_height": 200}),
    ("clip_score", "low_clip_score", "Product photo 123", "b.example.com",
     {"clip_score": 0.05, "bias_perceived": "gender/no_person", "original_width": 600, "original_height": 100}),
    ("dedup_phash", "duplicate", "A red bicycle leaning on a wall, again", "b.example.com",
     {"clip_score": 0.39, "nsfw_score": 0.0, "duplicate_of": "000000003", "original_width": 1024,
      "original_height": 768, "bias_perceived": "gender/no_person"}),
]
SHARD_SIZE = 10


def jpeg(colour, size=(48, 36)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def kept_samples():
    samples = []
    for i, (caption, domain, clip, nsfw, lang, perceived, (width, height)) in enumerate(KEPT):
        samples.append(Sample(
            key=f"{i:09d}", shard_id=0 if i < 4 else 1, url=f"https://{domain}/img/{i}.jpg",
            caption=caption, image=jpeg((30 * i, 200, 100)), image_format="jpg", width=48, height=36,
            original_width=width, original_height=height, sha256=f"{i:064d}",
            fields={"clip_score": clip, "nsfw_score": nsfw, "lang": lang, "lang_score": 0.9,
                    "bias_perceived": perceived, "clip_image_embedding": [0.1] * 8},
            extra={"row_id": i},
        ))
    return samples


def rejects():
    return [
        Reject(key=f"{100 + i:09d}", shard_id=i % 2, url=f"http://{domain}/r/{i}.jpg", caption=caption,
               stage=stage, reason=reason, fields=fields, extra={"row_id": 100 + i})
        for i, (stage, reason, caption, domain, fields) in enumerate(REJECTED)
    ]


def write_output(out: Path, fmt: str = "webdataset") -> dict:
    params = OutputParams(format=fmt, samples_per_shard=SHARD_SIZE)
    samples = kept_samples()
    for shard_id in (0, 1):
        write_shard(params, str(out), shard_id, [s for s in samples if s.shard_id == shard_id])
        write_rejects(params, str(out), shard_id, [r for r in rejects() if r.shard_id == shard_id])
    counts = {"kept": len(KEPT)}
    for stage, reason, *_ in REJECTED:
        counts[f"rejected/{stage}/{reason}"] = counts.get(f"rejected/{stage}/{reason}", 0) + 1
    return audit.finalize(
        counts=counts, input_rows=len(KEPT) + len(REJECTED), stage_reports=[("dedup", "dedup_phash", DEDUP_REPORT)],
        order=RUN_ORDER, recipe=RECIPE, output_dir=str(out),
    )


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    original = write_output(out)
    paths = write_reports(str(out))
    return out, original, paths


@pytest.fixture(scope="module")
def report(output):
    out, _, _ = output
    return json.loads((out / "report" / "audit.json").read_text())


@pytest.fixture(scope="module")
def page(output):
    out, _, _ = output
    return (out / "report" / "audit.html").read_text()


def test_writes_the_three_files(output):
    out, _, paths = output
    assert paths == [f"{out}/report/{name}" for name in ("audit.json", "optout.json", "audit.html")]
    assert all(Path(p).stat().st_size > 0 for p in paths)
    assert not list(out.glob("report/.*"))  # no temporary files left


def test_existing_audit_is_kept_exactly(output, report):
    _, original, _ = output
    for key in ("counts", "stage_order", "recipe", "dedup", "finished_at"):
        assert report[key] == original[key]


def test_funnel_follows_the_audit_counts(report):
    counts = report["counts"]
    funnel = report["funnel"]
    assert funnel[0] == {"stage": "input", "dropped": 0, "remaining": counts["input"]}
    assert [step["stage"] for step in funnel[1:]] == report["stage_order"]
    for step in funnel[1:]:
        assert step["dropped"] == sum(counts["rejected_by_stage"].get(step["stage"], {}).values())
    assert funnel[-1]["remaining"] == counts["kept"] == len(KEPT)


def every_histogram(report):
    distributions = report["distributions"]
    for group in ("scores", "image", "caption"):
        yield from distributions[group].items()


def test_every_histogram_counts_every_row_once(report):
    rows = report["distributions"]["rows"]
    assert rows == {"kept": len(KEPT), "rejected": len(REJECTED)}
    names = []
    for name, histogram in every_histogram(report):
        names.append(name)
        assert len(histogram["bins"]) == len(histogram["kept"]) + 1 == len(histogram["rejected"]) + 1
        for split in ("kept", "rejected"):
            assert sum(histogram[split]) + histogram["missing"][split] == rows[split], (name, split)
    assert set(names) == {"clip_score", "nsfw_score", "lang_score", "original_short_side", "original_long_side",
                          "aspect_ratio", "caption_chars", "caption_words"}


def test_score_histograms_split_kept_and_rejected_and_mark_the_recipe_thresholds(report):
    clip = report["distributions"]["scores"]["clip_score"]
    rejected_scores = [f["clip_score"] for *_, f in REJECTED if "clip_score" in f]
    assert sum(clip["rejected"]) == len(rejected_scores)
    assert clip["missing"]["rejected"] == len(REJECTED) - len(rejected_scores)
    assert clip["thresholds"] == [{"label": "clip_score.threshold", "value": 0.28}]
    nsfw = report["distributions"]["scores"]["nsfw_score"]
    assert nsfw["bins"][-1] == 0.6 and nsfw["above_range"] == {"kept": 0, "rejected": 0}  # scores are never folded
    assert clip["bins"][0] == min(rejected_scores) and clip["bins"][-1] == max(k[2] for k in KEPT)
    first_kept_bin = next(i for i, n in enumerate(clip["kept"]) if n)
    assert clip["bins"][first_kept_bin + 1] > 0.28 >= clip["bins"][first_kept_bin]  # nothing kept below it
    assert report["distributions"]["scores"]["nsfw_score"]["thresholds"] == [{"label": "nsfw.threshold", "value": 0.5}]
    assert "clip_image_embedding" not in json.dumps(report["distributions"])  # lists are not scores


def test_long_caption_tail_is_folded_into_the_last_bin(report):
    chars = report["distributions"]["caption"]["caption_chars"]
    assert chars["bins"][-1] < len(LONG_CAPTION)
    assert chars["above_range"] == {"kept": 0, "rejected": 1}
    assert chars["thresholds"] == [
        {"label": "caption.min_chars", "value": 5}, {"label": "caption.max_chars", "value": 1000}]


def test_aspect_ratio_uses_a_log_axis_with_both_limits(report):
    ratio = report["distributions"]["image"]["aspect_ratio"]
    assert ratio["scale"] == "log"
    assert ratio["bins"][0] == pytest.approx(90 / 1200) and ratio["bins"][-1] == pytest.approx(600 / 100)


def test_languages_and_domains(report):
    distributions = report["distributions"]
    assert distributions["languages"]["kept"] == dict(Counter(k[4] for k in KEPT).most_common())
    assert distributions["languages"]["rejected"] == {}
    kept_domains = Counter(k[1].removeprefix("www.") for k in KEPT)
    assert distributions["domains"]["kept"] == [list(item) for item in kept_domains.most_common(20)]
    assert dict(distributions["domains"]["rejected"]) == Counter(r[3] for r in REJECTED)
    assert distributions["domains"]["approximate"] is False


def test_optout_counts_by_rule_and_domain(output, report):
    out, _, _ = output
    optout = json.loads((out / "report" / "optout.json").read_text())
    assert optout["total"] == 4 and optout["domains"] == 2
    assert optout["by_reason"] == {"optout_robots_txt": 2, "optout_list": 1, "optout_tdmrep": 1}
    assert optout["by_list_rule_kind"] == {"domain": 1}
    assert optout["top_domains"] == [
        {"domain": "blocked.example.org", "count": 3, "by_reason": {"optout_robots_txt": 2, "optout_tdmrep": 1}},
        {"domain": "other.example.net", "count": 1, "by_reason": {"optout_list": 1}},
    ]
    assert report["optout"] == optout


def test_bias_mentions_and_cooccurrences_per_outcome(report):
    bias = report["bias"]
    female = bias["mentions"]["labels"]["gender/female"]
    # kept: woman cooking, girl+her grandmother, (french "femme" is not in the English list)
    assert female == {"kept": 2, "optout": 1, "download": 1, "clip_score": 2}
    assert bias["mentions"]["rows"] == {"kept": 8, "optout": 4, "download": 2, "caption": 2, "clip_score": 3,
                                        "dedup_phash": 1}
    cooking = bias["cooccurrence"]["labels"]["gender/female & activity/cooking"]
    assert cooking == {"kept": 2, "download": 1, "clip_score": 2}
    assert bias["cooccurrence"]["labels"]["gender/male & occupation/technology"] == {"kept": 1}


def test_perceived_attributes_come_from_the_stage_field(report):
    perceived = report["bias"]["perceived"]
    assert perceived["rows"] == {"kept": 8, "clip_score": 3, "dedup_phash": 1}  # rows that reached the stage
    assert perceived["labels"]["gender/female"] == {"kept": 4, "clip_score": 2}


class PageParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.links: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "data", "action", "poster"):
                self.links.append((tag, name, value or ""))
            if name == "id":
                self.ids.add(value)


def test_page_is_self_contained(page):
    parser = PageParser()
    parser.feed(page)
    assert parser.tags["script"] == 0 and parser.tags["link"] == 0 and parser.tags["iframe"] == 0
    for tag, name, value in parser.links:
        assert value.startswith(("#", "data:image/")), (tag, name, value[:80])
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)  # no remote CSS resources
    assert "@import" not in page


def test_page_has_every_section_chart_and_thumbnail(page):
    parser = PageParser()
    parser.feed(page)
    sections = {"summary", "funnel", "scores", "images", "captions", "languages", "domains", "hosts", "dedup",
                "optout", "bias", "examples", "recipe"}
    assert sections <= parser.ids
    assert {value[1:] for tag, _, value in parser.links if tag == "a"} == sections  # the table of contents
    assert parser.tags["svg"] >= 12  # funnel, 3 scores, 3 image, 2 caption, languages, domains, 2 opt-out
    assert parser.tags["img"] == len(KEPT)
    # clip 0.28, nsfw 0.5, min_side 100, 1/max_aspect_ratio, min_words; the others are outside the data's range
    assert page.count('class="threshold"') == 5
    assert "caption.min_chars = 5 is outside the data" in page
    assert "clip_score.threshold = 0.28" in page


def test_page_escapes_captions_and_shows_rejects_as_text(page):
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://blocked.example.org/r/0.jpg" in page  # url as text, never fetched
    assert "duplicate of 000000003" in page
    assert "cluster_size_histogram" in page and "largest_clusters" in page  # the dedup stage's own report


def test_regenerating_gives_the_same_numbers(output, report):
    out, _, _ = output
    write_reports(str(out))
    again = json.loads((out / "report" / "audit.json").read_text())
    for key in ("counts", "funnel", "distributions", "optout", "bias"):
        assert again[key] == report[key]


def test_report_command_regenerates_from_an_output_folder(tmp_path, capsys):
    out = tmp_path / "out"
    write_output(out)
    parser = argparse.ArgumentParser(prog="curate")
    add_report_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(out)])
    assert args.handler(args, []) == 0
    assert "audit.html" in capsys.readouterr().out
    assert "distributions" in json.loads((out / "report" / "audit.json").read_text())


def test_report_command_on_a_folder_without_audit_fails_clearly(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="curate")
    add_report_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(tmp_path)])
    assert args.handler(args, []) == 2
    assert "audit.json does not exist" in capsys.readouterr().err
    with pytest.raises(ReportError):
        write_reports(str(tmp_path))


def test_parquet_format_thumbnails_come_from_the_image_column(tmp_path):
    out = tmp_path / "out"
    write_output(out, fmt="parquet")
    assert "jpg" in pq.read_schema(out / "shards" / "00000.parquet").names
    write_reports(str(out))
    page = (out / "report" / "audit.html").read_text()
    assert page.count('src="data:image/jpeg;base64,') == len(KEPT)
    report = json.loads((out / "report" / "audit.json").read_text())
    assert report["distributions"]["rows"]["kept"] == len(KEPT)


def test_broken_file_is_reported_not_fatal(tmp_path):
    out = tmp_path / "out"
    write_output(out)
    (out / "rejects" / "00001.parquet").write_bytes(b"not parquet")
    (out / "_SUCCESS").unlink()
    write_reports(str(out))
    report = json.loads((out / "report" / "audit.json").read_text())
    problems = report["report"]["problems"]
    assert any("00001.parquet: unreadable" in p for p in problems)
    assert any("incomplete" in p for p in problems)  # rows read no longer match the audit
    page = (out / "report" / "audit.html").read_text()
    assert "No _SUCCESS file" in page


# ---------------------------------------------------------------- rendering in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args, profile: Path) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(output, tmp_path):
    out, _, _ = output
    url = (out / "report" / "audit.html").as_uri()
    dom = chromium("--dump-dom", url, profile=tmp_path / "profile").stdout
    assert dom.count("<svg") >= 12 and dom.count("<rect") > 100
    assert 'id="bias"' in dom and "Perceived attributes (model estimates)" in dom
    screenshot = tmp_path / "report.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1200,3000", url, profile=tmp_path / "profile")
    with Image.open(screenshot) as image:
        assert image.size == (1200, 3000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    # Charts in the two series colours, not a blank or error page.
    present = {colour for _, colour in colours}
    assert (0x3B, 0x6F, 0xB6) in present and (0xE0, 0x7B, 0x39) in present


def test_top_fraction_cut_off_is_the_lowest_kept_score():
    from pipeline.tools.report import Range, threshold_markers

    scores = Range()
    for value, kept in ((0.1, False), (0.25, True), (0.4, True), (0.2, False)):
        scores.add(value, kept)
    top_fraction = {"top_fraction": {"field": "clip_score", "fraction": 0.5}}
    recipe = {"stages": [{"clip_score": {"threshold": None}}, top_fraction]}
    assert threshold_markers("clip_score", recipe, scores) == [
        {"label": "top_fraction cut-off (lowest kept)", "value": 0.25}]
    assert threshold_markers("nsfw_score", recipe, scores) == []
