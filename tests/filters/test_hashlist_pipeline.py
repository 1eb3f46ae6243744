"""hashlist end to end on the sample web: listed images are rejected in the download, and no output repeats a hash."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.media.hash_lists import hash_fields
from pipeline.demo.run_demo import run_demo
from pipeline.demo.sample_web import generate_sample_web

RECIPE = """
name: hashlist-check
download: {timeout: 5, retries: 0, threads: 8}
output: {samples_per_shard: 100}
stages:
  - caption: {min_chars: 5, min_words: 2}
  - hashlist
  - dedup_exact
"""


def reencoded(data: bytes, quality: int, scale: float) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image = image.resize((int(image.width * scale), int(image.height * scale)))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        return out.getvalue()


@pytest.mark.slow
def test_listed_images_leave_as_rejects_and_no_output_names_a_hash(tmp_path):
    web = tmp_path / "web"
    rows = generate_sample_web(web)
    images = [row for row in rows if row["path"].endswith(".jpg") and (web / row["path"]).is_file()]
    exact, near = images[0]["path"], images[1]["path"]
    md5 = hashlib.md5((web / exact).read_bytes()).hexdigest()
    pdq = hash_fields(reencoded((web / near).read_bytes(), 60, 0.7), 10**8)["pdq"]
    (tmp_path / "bad.txt").write_text(f"md5:{md5}\npdq:{pdq}\n")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    code = run_demo(str(out), str(tmp_path / "recipe.yaml"), overrides=[f"hashlist.lists={tmp_path / 'bad.txt'}"])
    assert code == 0 and (out / "_SUCCESS").exists()
    rejects = [row for path in sorted((out / "rejects").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    listed = {row["url"].rsplit("/", 1)[-1]: row for row in rejects if row["stage"] == "hashlist"}
    assert listed[Path(exact).name]["reason"] == "hashlist_md5"
    assert listed[Path(near).name]["reason"] == "hashlist_pdq"
    fields = json.loads(listed[Path(near).name]["fields"])
    assert fields["hashlist_name"] == "bad" and 0 < fields["hashlist_distance"] <= 31
    for path in out.rglob("*"):
        if path.is_file():
            text = readable(path)
            assert md5 not in text and pdq not in text, path


def readable(path: Path) -> str:
    """A file's content as text; Parquet decoded (its pages may be compressed)."""
    if path.suffix == ".parquet":
        return json.dumps(pq.read_table(path).to_pylist(), default=str)
    return path.read_bytes().decode("latin-1")
