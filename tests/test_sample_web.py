"""The bundled sample web: deterministic, realistic, and with every planted fault present."""
from __future__ import annotations

import collections
import json
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from pipeline.demo.localweb import FaultHandler
from pipeline.demo.sample_web import generate_sample_web

N_ROWS = 300


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("web")
    return root, generate_sample_web(root, n_rows=N_ROWS, seed=0)


def kind(row: dict) -> str:
    return row["row_note"].partition(":")[0]


def rows_of(rows: list[dict], row_kind: str) -> list[dict]:
    return [row for row in rows if kind(row) == row_kind]


def decoded(path: Path) -> Image.Image:
    picture = Image.open(path)
    picture.load()
    return picture


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_gives_same_rows_and_bytes(web, tmp_path):
    root, rows = web
    again = generate_sample_web(tmp_path, n_rows=N_ROWS, seed=0)
    assert again == rows
    assert file_bytes(tmp_path) == file_bytes(root)


def test_other_seed_gives_other_web(web, tmp_path):
    _, rows = web
    assert generate_sample_web(tmp_path, n_rows=60, seed=1) != rows[:60]


def test_row_count_and_columns(web):
    _, rows = web
    assert len(rows) == N_ROWS
    assert {tuple(row) for row in rows} == {("path", "caption", "source_page", "license", "page_lang", "row_note")}
    assert len({row["path"] for row in rows}) == N_ROWS


def test_good_rows_exist_decode_and_are_most_rows(web):
    root, rows = web
    good = [row for row in rows if kind(row) == "good"]
    assert 0.7 <= len(good) / len(rows) <= 0.85
    for row in good:
        picture = decoded(root / row["path"])
        assert min(picture.size) >= 64, row
        assert row["caption"] and row["caption"].strip(), row


def test_good_images_are_varied(web):
    root, rows = web
    pictures = [Image.open(root / row["path"]) for row in rows if kind(row) == "good"]
    formats = {picture.format for picture in pictures}
    modes = {picture.mode for picture in pictures}
    shapes = {"landscape" if p.width > p.height else "portrait" if p.width < p.height else "square" for p in pictures}
    assert {"JPEG", "PNG", "WEBP"} <= formats
    assert {"RGB", "RGBA", "P", "CMYK", "L"} <= modes
    assert shapes == {"landscape", "portrait", "square"}
    assert max(max(p.size) for p in pictures) >= 1000
    assert max(max(p.size) / min(p.size) for p in pictures) >= 8  # the banners


def test_exif_rotated_image_turns_upright(web):
    root, rows = web
    (row,) = [row for row in rows if row["row_note"] == "good:exif_orientation"]
    stored = Image.open(root / row["path"])
    assert stored.getexif()[0x0112] == 6
    assert stored.width > stored.height
    upright = ImageOps.exif_transpose(stored)
    assert upright.width < upright.height


def test_every_planted_kind_is_present(web):
    _, rows = web
    kinds = collections.Counter(kind(row) for row in rows)
    planted = {"broken_link", "server_error", "truncated_transfer", "duplicate_of", "near_duplicate_of",
               "tiny", "not_an_image", "truncated", "bad_caption"}
    assert planted <= set(kinds)
    bad_captions = {row["row_note"] for row in rows_of(rows, "bad_caption")}
    assert bad_captions == {f"bad_caption:{why}" for why in ("empty", "none", "filename", "placeholder", "too_long")}


def test_broken_links_and_fault_routes(web):
    root, rows = web
    broken = rows_of(rows, "broken_link")
    missing_files = [row for row in broken if not row["path"].startswith("/")]
    assert missing_files and all(not (root / row["path"]).exists() for row in missing_files)
    assert all(row["path"].startswith("/_fault/status/404") for row in broken if row["path"].startswith("/"))
    assert all(row["path"].startswith("/_fault/status/500") for row in rows_of(rows, "server_error"))
    assert all(row["path"].startswith("/_fault/truncated") for row in rows_of(rows, "truncated_transfer"))


def test_the_demo_server_has_every_fault_route_the_sample_web_links_to(web):
    # The routes only tests use live in tests/localweb_faults.py; the demo must not need them.
    _root, rows = web
    linked = {row["path"].split("/")[2].partition("?")[0] for row in rows if row["path"].startswith("/_fault/")}
    assert linked == {"status", "truncated", "headers"}
    assert linked <= set(FaultHandler.routes)


def test_exact_duplicates_share_bytes_not_captions_and_come_later(web):
    root, rows = web
    position = {row["path"]: index for index, row in enumerate(rows)}
    by_path = {row["path"]: row for row in rows}
    for row in rows_of(rows, "duplicate_of"):
        original = by_path[row["row_note"].partition(":")[2]]
        assert original["row_note"] == "good"
        assert row["path"] != original["path"]
        assert (root / row["path"]).read_bytes() == (root / original["path"]).read_bytes()
        assert row["caption"] != original["caption"]
        assert position[original["path"]] < position[row["path"]]


def test_near_duplicates_are_reencoded_copies(web):
    root, rows = web
    position = {row["path"]: index for index, row in enumerate(rows)}
    for row in rows_of(rows, "near_duplicate_of"):
        original_path = row["row_note"].partition(":")[2]
        copy, original = decoded(root / row["path"]), decoded(root / original_path)
        assert copy.format == "JPEG" and copy.size == original.size
        assert (root / row["path"]).read_bytes() != (root / original_path).read_bytes()
        assert position[original_path] < position[row["path"]]


def test_tiny_images_decode_and_are_tiny(web):
    root, rows = web
    for row in rows_of(rows, "tiny"):
        assert max(decoded(root / row["path"]).size) <= 16


@pytest.mark.parametrize("row_kind", ["not_an_image", "truncated"])
def test_broken_files_exist_but_do_not_decode(web, row_kind):
    root, rows = web
    for row in rows_of(rows, row_kind):
        assert (root / row["path"]).is_file()
        with pytest.raises(OSError):  # PIL's UnidentifiedImageError and "truncated" are OSErrors
            decoded(root / row["path"])


def test_not_an_image_includes_html_and_text_named_jpg(web):
    root, rows = web
    paths = [row["path"] for row in rows_of(rows, "not_an_image")]
    assert any(path.endswith(".html") for path in paths)
    assert any(path.endswith(".jpg") and (root / path).read_bytes().isascii() for path in paths)


def test_bad_captions_are_bad(web):
    root, rows = web
    captions = {row["row_note"].partition(":")[2]: row["caption"] for row in rows_of(rows, "bad_caption")}
    assert captions["none"] is None
    assert captions["empty"].strip() == ""
    assert len(captions["too_long"]) > 1000
    for row in rows_of(rows, "bad_caption"):
        decoded(root / row["path"])  # the picture itself is fine


def test_language_mix(web):
    _, rows = web
    languages = collections.Counter(row["page_lang"] for row in rows if kind(row) == "good")
    assert len(languages) >= 6
    non_english = sum(count for lang, count in languages.items() if lang != "en") / sum(languages.values())
    assert 0.1 <= non_english <= 0.3


def test_captions_come_from_the_bundled_file(web):
    _, rows = web
    lines = resources.files("pipeline.demo").joinpath("data/sample_captions.jsonl").read_text(encoding="utf-8").splitlines()
    bundled = {json.loads(line)["caption"]: json.loads(line)["lang"] for line in lines}
    assert len(bundled) >= 140 and len(set(bundled.values())) >= 10
    for row in rows:
        if kind(row) in ("good", "broken_link", "tiny", "duplicate_of"):
            assert bundled[row["caption"]] == row["page_lang"]


def test_total_size_is_small(web):
    root, _ = web
    assert sum(len(data) for data in file_bytes(root).values()) < 5_000_000


def test_too_few_rows_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        generate_sample_web(tmp_path, n_rows=20)
