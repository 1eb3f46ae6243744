"""Side by side with img2dataset 1.47 on the same loopback URL list: code written for its output
must run unchanged on ours (README "Coming from img2dataset")."""
import glob
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.demo.localweb import LocalWeb

pytestmark = pytest.mark.slow  # img2dataset takes ~40 s to start its process pool

FILES = ["a.jpg", "missing.jpg", "page.jpg", "b.jpg", "c.jpg"]  # 404 and not-an-image in the middle
PER_SHARD = 2
IMG2DATASET = Path(sys.executable).with_name("img2dataset")
ONLY_IMG2DATASET = {"exif"}  # we do not extract EXIF (README)
ONLY_OURS = {"shard_id"}


def _jpeg(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "teal").save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    web_root = root / "web"
    web_root.mkdir()
    for name, size in [("a.jpg", (120, 90)), ("b.jpg", (90, 120)), ("c.jpg", (64, 64))]:
        (web_root / name).write_bytes(_jpeg(size))
    (web_root / "page.jpg").write_bytes(b"<html><body>not an image</body></html>")
    recipe = root / "bare.yaml"
    recipe.write_text(
        f"resize: {{image_size: 256, resize_mode: border}}\noutput: {{samples_per_shard: {PER_SHARD}}}\nstages: []\n"
    )
    with LocalWeb(web_root) as web:
        rows = [{"url": web.url(name), "caption": f"caption {i}", "row_id": i} for i, name in enumerate(FILES)]
        pq.write_table(pa.Table.from_pylist(rows), root / "urls.parquet")
        theirs = root / "img2dataset"
        subprocess.run(
            [str(IMG2DATASET), f"--url_list={root / 'urls.parquet'}", "--input_format=parquet",
             f"--output_folder={theirs}", "--output_format=webdataset", "--processes_count=1", "--thread_count=4",
             "--image_size=256", "--resize_mode=border", f"--number_sample_per_shard={PER_SHARD}",
             '--save_additional_columns=["row_id"]', "--enable_wandb=False", "--url_col=url", "--caption_col=caption"],
            env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}, check=True, capture_output=True, timeout=300,
        )
        ours = root / "curate"
        assert main(["run", "--recipe", str(recipe), "--input", str(root / "urls.parquet"), "--output", str(ours),
                     "--allow-private-network", "--direct_num_workers=1"]) == 0
    return theirs, ours / "shards"


def _tar_members(folder) -> dict[str, list[str]]:
    return {Path(p).name: tarfile.open(p).getnames() for p in sorted(glob.glob(f"{folder}/*.tar"))}


def _json_records(folder) -> dict[str, dict]:
    records = {}
    for path in sorted(glob.glob(f"{folder}/*.tar")):
        with tarfile.open(path) as tar:
            for name in tar.getnames():
                if name.endswith(".json"):
                    records[name] = json.loads(tar.extractfile(name).read())
    return records


def test_same_shard_files_members_and_keys(outputs):
    theirs, ours = outputs
    assert _tar_members(ours) == _tar_members(theirs)


def test_json_records_have_their_fields_and_values(outputs):
    theirs, ours = outputs
    their_records, our_records = _json_records(theirs), _json_records(ours)
    assert our_records.keys() == their_records.keys()
    for name, theirs_record in their_records.items():
        ours_record = our_records[name]
        assert set(ours_record) - ONLY_OURS == set(theirs_record) - ONLY_IMG2DATASET
        for field in set(theirs_record) - ONLY_IMG2DATASET:
            assert ours_record[field] == theirs_record[field], field


def test_parquet_columns_have_their_types(outputs):
    theirs, ours = outputs
    for path in sorted(glob.glob(f"{theirs}/*.parquet")):
        their_schema = pq.read_schema(path)
        our_schema = pq.read_schema(f"{ours}/{Path(path).name}")
        assert set(our_schema.names) - ONLY_OURS == set(their_schema.names) - ONLY_IMG2DATASET
        for field in their_schema:
            if field.name not in ONLY_IMG2DATASET:
                assert our_schema.field(field.name).type == field.type, field.name


def _stats(folder) -> dict[str, dict]:
    return {Path(p).name: json.loads(Path(p).read_text()) for p in sorted(glob.glob(f"{folder}/*_stats.json"))}


def test_stats_files_have_their_counts(outputs):
    theirs, ours = outputs
    their_stats, our_stats = _stats(theirs), _stats(ours)
    assert our_stats.keys() == their_stats.keys()
    for name, expected in their_stats.items():
        for field in ("count", "successes", "failed_to_download", "failed_to_resize"):
            assert our_stats[name][field] == expected[field], (name, field)
        assert our_stats[name]["status_dict"]["success"] == expected["status_dict"]["success"]


def test_snippets_written_for_img2dataset_run_unchanged(outputs):
    import webdataset as wds

    for folder in outputs:
        df = pd.concat(pd.read_parquet(p) for p in sorted(glob.glob(f"{folder}/*.parquet")))
        success = df[df.status == "success"]
        assert sorted(success.row_id) == [0, 3, 4]
        assert success.error_message.isna().all()
        stats = [json.loads(Path(p).read_text()) for p in glob.glob(f"{folder}/*_stats.json")]
        assert sum(s["successes"] for s in stats) == 3 and sum(s["count"] for s in stats) == len(FILES)
        pattern = f"{folder}/{{00000..{len(stats) - 1:05d}}}.tar"
        samples = list(wds.WebDataset(pattern, shardshuffle=False).decode("pil").to_tuple("jpg", "txt", "json"))
        assert [(image.size, caption == meta["caption"]) for image, caption, meta in samples] == [((256, 256), True)] * 3
