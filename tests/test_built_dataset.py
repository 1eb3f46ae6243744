"""The one reader of a built dataset: both output formats read back the same rows and images."""
import io

import pytest
from PIL import Image

from pipeline.core.records import Reject, Sample
from pipeline.engine import built_dataset
from pipeline.engine.writers import OutputParams, write_rejects, write_shard


def image(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, "PNG")
    return buffer.getvalue()


SAMPLES = [
    Sample(key=f"00000000{i}", shard_id=0, url=f"http://x/{i}.png", caption=caption, image=image(colour),
           image_format="png", fields={"score": i / 10})
    for i, (caption, colour) in enumerate([("red one", "red"), (None, "blue"), ("green one", "green")])
]


@pytest.fixture(params=["webdataset", "parquet"])
def dataset(request, tmp_path):
    params = OutputParams(format=request.param)
    write_shard(params, str(tmp_path), 0, SAMPLES[:2])
    write_shard(params, str(tmp_path), 1, SAMPLES[2:])
    write_rejects(params, str(tmp_path), 0, [Reject("000000009", 0, "http://x/9.png", "gone", "download", "http_404")])
    return str(tmp_path), request.param


def test_kept_images_are_every_kept_sample_in_shard_order_whatever_the_format(dataset):
    folder, fmt = dataset
    problems = []
    stored = list(built_dataset.kept_images(folder, problems))
    # A tar holds a caption for every sample ("" when it had none); a Parquet row keeps the null.
    captions = ["red one", "" if fmt == "webdataset" else None, "green one"]
    assert [(s.key, s.caption, s.image) for s in stored] == [
        (sample.key, caption, sample.image) for sample, caption in zip(SAMPLES, captions)]
    assert problems == []


def test_shard_images_reads_only_the_keys_asked_for(dataset):
    folder, fmt = dataset
    shard = built_dataset.Shard("00000", f"{folder}/shards/00000.parquet",
                                f"{folder}/shards/00000.tar" if fmt == "webdataset" else None, 2)
    assert [s.key for s in built_dataset.shard_images(shard, {SAMPLES[1].key})] == [SAMPLES[1].key]


def test_kept_and_rejected_rows_come_in_batches_without_image_bytes(dataset):
    folder, _ = dataset
    problems = []
    kept = [row for batch in built_dataset.kept_batches(folder, problems, built_dataset.scalar_columns) for row in batch]
    assert [row["key"] for row in kept] == [sample.key for sample in SAMPLES]
    assert not {"png", "jpg"} & set(kept[0])
    rejected = [row for batch in built_dataset.reject_batches(folder, problems) for row in batch]
    assert [(row["key"], row["stage"], row["reason"]) for row in rejected] == [("000000009", "download", "http_404")]
    assert problems == []


def test_an_unreadable_shard_is_named_and_skipped_not_raised(dataset):
    folder, _ = dataset
    with open(f"{folder}/shards/00000.parquet", "wb") as handle:
        handle.write(b"not parquet")
    problems = []
    kept = [row for batch in built_dataset.kept_batches(folder, problems) for row in batch]
    assert [row["key"] for row in kept] == [SAMPLES[2].key]
    assert len(problems) == 1 and "00000.parquet: unreadable" in problems[0]
