"""Embeddings in DataComp's `.npz` layout beside each shard: written, checked, kept true by a takedown."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filters.aesthetic import Aesthetic
from filters.clip_score import ClipScore
from pipeline.models.embedding_output import array_prefix
from pipeline.engine import audit, embedding_files
from pipeline.engine.built_dataset import DatasetError, open_dataset
from pipeline.core.layout import in_layout
from pipeline.core.params import ParamError, build
from pipeline.core.records import Sample
from pipeline.tools.takedown import takedown
from pipeline.engine.writers import OutputParams, write_shard
from tests.filters.tiny_openclip import png_bytes, save_tiny_clip

DIM = 8
NPZ = {"clip_image_embedding": "b32_img", "clip_text_embedding": "b32_txt"}
PER_SHARD = 4


def vector(seed: int) -> list[float]:
    values = np.random.default_rng(seed).normal(size=DIM)
    return (values / np.linalg.norm(values)).astype(np.float16).tolist()


def embedded_sample(shard: int, index: int, caption: str | None = "a caption") -> Sample:
    seed = shard * 10 + index
    return Sample(
        key=f"{shard:05d}{index}", shard_id=shard, url=f"https://ok.org/{shard}/{index}.png", caption=caption,
        image=png_bytes(seed, 16), image_format="png", width=16, height=16, original_width=16, original_height=16,
        sha256=f"{seed:064x}",
        fields={"clip_score": 0.1 * index, "clip_image_embedding": vector(seed),
                "clip_text_embedding": vector(seed + 100) if caption else None},
    )


def read_npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files}


def tar_keys(path) -> list[str]:
    with tarfile.open(path) as tar:
        return list(dict.fromkeys(member.name.partition(".")[0] for member in tar))


def build_dataset(out, fmt="webdataset", shards=2) -> list[Sample]:
    """A finished dataset as `curate run` writes it with clip_score's embeddings in .npz."""
    output = OutputParams(format=fmt, samples_per_shard=PER_SHARD)
    written = []
    for shard in range(shards):
        samples = [embedded_sample(shard, index) for index in reversed(range(3))]  # the writer sorts by key
        write_shard(output, str(out), shard, samples, npz_arrays=NPZ)
        written += sorted(samples, key=lambda s: s.key)
    recipe = {"name": "test", "output": vars(output), "stages": []}
    audit.write_json(f"{out}/recipe.json", recipe)
    audit.finalize({"kept": len(written)}, len(written), [], order=["read"], recipe=recipe, output_dir=str(out))
    return written


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_shards_get_datacomp_npz_with_rows_in_the_shard_order(tmp_path, fmt):
    samples = build_dataset(tmp_path, fmt, shards=1)
    arrays = read_npz(tmp_path / "shards" / "00000.npz")
    assert sorted(arrays) == ["b32_img", "b32_txt", "key"]
    table = pq.read_table(tmp_path / "shards" / "00000.parquet")
    assert arrays["key"].tolist() == table.column("key").to_pylist() == [s.key for s in samples]
    if fmt == "webdataset":
        assert tar_keys(tmp_path / "shards" / "00000.tar") == arrays["key"].tolist()
    assert arrays["b32_img"].dtype == np.float16 and arrays["b32_img"].shape == (3, DIM)
    for row, sample in zip(range(3), samples):
        assert arrays["b32_img"][row].tolist() == sample.fields["clip_image_embedding"]
        assert arrays["b32_txt"][row].tolist() == sample.fields["clip_text_embedding"]
    # Moved, not copied: no Parquet column, nothing in the .json, the scores stay.
    assert "clip_image_embedding" not in table.column_names and "clip_score" in table.column_names
    if fmt == "webdataset":
        with tarfile.open(tmp_path / "shards" / "00000.tar") as tar:
            member = json.loads(tar.extractfile(f"{samples[0].key}.json").read())
        assert "clip_score" in member and not any(name.endswith("_embedding") for name in member)


def test_a_rerun_writes_identical_npz_bytes(tmp_path):
    digests = []
    for run in ("a", "b"):
        write_shard(OutputParams(), str(tmp_path / run), 0, [embedded_sample(0, i) for i in range(3)], npz_arrays=NPZ)
        digests.append(hashlib.sha256((tmp_path / run / "shards" / "00000.npz").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_a_missing_embedding_is_a_row_of_nan(tmp_path):
    samples = [embedded_sample(0, 0), embedded_sample(0, 1, caption=None)]
    write_shard(OutputParams(), str(tmp_path), 0, samples, npz_arrays=NPZ)
    text = read_npz(tmp_path / "shards" / "00000.npz")["b32_txt"]
    assert not np.isnan(text[0]).any() and np.isnan(text[1]).all()


def test_without_the_option_embeddings_stay_in_the_parquet(tmp_path):
    write_shard(OutputParams(), str(tmp_path), 0, [embedded_sample(0, i) for i in range(2)])
    assert not glob.glob(f"{tmp_path}/shards/*.npz")
    table = pq.read_table(tmp_path / "shards" / "00000.parquet")
    assert table.schema.field("clip_image_embedding").type == pa.list_(pa.float16())


def test_array_names_follow_datacomp():
    assert array_prefix("ViT-B-32-quickgelu") == "b32" and array_prefix("ViT-L-14") == "l14"
    assert array_prefix("ViT-bigG-14") == "bigg14" and array_prefix("RN50") == "rn50"
    assert array_prefix("ViT-B-32", "mine") == "mine"
    clip = ClipScore(ClipScore.Params(store_embeddings=True, embeddings_file="npz"))
    assert clip.npz_arrays() == NPZ
    assert ClipScore(ClipScore.Params(store_embeddings=True)).npz_arrays() == {}
    aesthetic = Aesthetic(Aesthetic.Params(store_embeddings=True, embeddings_file="npz"))
    assert aesthetic.npz_arrays() == {"aesthetic_image_embedding": "l14_img"}
    assert embedding_files.npz_arrays_of([clip, aesthetic]) == {**NPZ, "aesthetic_image_embedding": "l14_img"}


def test_two_stages_writing_one_array_are_refused():
    clip = ClipScore(ClipScore.Params(store_embeddings=True, embeddings_file="npz"))
    same = Aesthetic(Aesthetic.Params(store_embeddings=True, embeddings_file="npz", model="ViT-B-32"))
    with pytest.raises(embedding_files.EmbeddingArraysError, match="b32_img"):
        embedding_files.npz_arrays_of([clip, same])
    with pytest.raises(ParamError, match="needs clip_score.store_embeddings"):
        build(ClipScore.Params, {"embeddings_file": "npz"}, "clip_score")
    with pytest.raises(ParamError, match="embeddings_name"):
        build(ClipScore.Params, {"store_embeddings": True, "embeddings_name": "B/32"}, "clip_score")


def test_npz_files_are_curates_own():
    assert in_layout("shards/00000.npz") and in_layout("shards/.00000.npz.0123456789abcdef0123456789abcdef.tmp")
    assert not in_layout("shards/00000.npy") and not in_layout("notes/00000.npz")


def optout(tmp_path, *urls):
    path = tmp_path / "optout.txt"
    path.write_text("".join(f"url:{url}\n" for url in urls))
    return str(path)


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_takedown_removes_the_row_from_the_npz(tmp_path, fmt):
    out = tmp_path / "dataset"
    samples = build_dataset(out, fmt)
    removed = samples[1]
    takedown(str(out), optout(tmp_path, removed.url), progress=lambda _: None)
    arrays = read_npz(out / "shards" / "00000.npz")
    keys = pq.read_table(out / "shards" / "00000.parquet").column("key").to_pylist()
    assert arrays["key"].tolist() == keys == [samples[0].key, samples[2].key]
    for row, sample in enumerate([samples[0], samples[2]]):
        assert arrays["b32_img"][row].tolist() == sample.fields["clip_image_embedding"]
    if fmt == "webdataset":
        assert tar_keys(out / "shards" / "00000.tar") == keys
    assert read_npz(out / "shards" / "00001.npz")["key"].tolist() == [s.key for s in samples[3:]]
    open_dataset(str(out))  # still consistent


def test_takedown_into_another_folder_takes_every_npz(tmp_path):
    out, copy = tmp_path / "dataset", tmp_path / "copy"
    samples = build_dataset(out)
    audit.write_json(f"{out}/shards/00001_stats.json", {"count": 3, "successes": 3})
    takedown(str(out), optout(tmp_path, samples[0].url), str(copy), progress=lambda _: None)
    assert read_npz(copy / "shards" / "00000.npz")["key"].tolist() == [s.key for s in samples[1:3]]
    for unaffected in ("00001.npz", "00001_stats.json"):  # linked over with the shard they belong to
        assert (copy / "shards" / unaffected).read_bytes() == (out / "shards" / unaffected).read_bytes()
    open_dataset(str(copy))


def rewrite_npz(path, change):
    arrays = change(read_npz(path))
    buffer = io.BytesIO()
    embedding_files.write_npz(buffer, arrays)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("breakage, message", [
    (lambda arrays: {**arrays, "key": arrays["key"][::-1]}, "other keys"),
    (lambda arrays: {**arrays, "b32_img": arrays["b32_img"][:-1]}, "one row per sample"),
])
def test_an_npz_out_of_step_with_its_shard_is_refused(tmp_path, breakage, message):
    out = tmp_path / "dataset"
    samples = build_dataset(out)
    rewrite_npz(out / "shards" / "00001.npz", breakage)
    with pytest.raises(DatasetError, match=message):
        takedown(str(out), optout(tmp_path, samples[0].url), progress=lambda _: None)
    assert read_npz(out / "shards" / "00000.npz")["key"].size == 3  # nothing changed


def test_an_npz_without_its_shard_or_unreadable_is_refused(tmp_path):
    out = tmp_path / "dataset"
    build_dataset(out)
    (out / "shards" / "00001.npz").write_bytes(b"PK\x03\x04 not a zip")
    (out / "shards" / "00007.npz").write_bytes((out / "shards" / "00000.npz").read_bytes())
    with pytest.raises(DatasetError) as raised:
        open_dataset(str(out))
    assert "00001.npz cannot be read" in str(raised.value) and "00007.npz has no shards/00007.parquet" in str(raised.value)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_a_run_with_clip_score_writes_npz_matching_the_tars(tmp_path, tiny_clip):
    """End to end: `curate run` with clip_score's embeddings in .npz, recomputed, then a takedown."""
    from pipeline.cli import main
    from pipeline.demo.localweb import LocalWeb
    from tests.test_optout_rules import picture

    root = tmp_path / "web"
    root.mkdir()
    names = [f"{name}.jpg" for name in "abcde"]
    for seed, name in enumerate(names):
        (root / name).write_bytes(picture((80, 60), seed=seed))
    (tmp_path / "recipe.yaml").write_text(
        "output: {samples_per_shard: 3}\nstages:\n"
        f"  - clip_score: {{model: {tiny_clip.model}, pretrained: {tiny_clip.pretrained}, "
        f"model_config: {tiny_clip.model_config}, threshold: null, store_embeddings: true, embeddings_file: npz}}\n")
    out = tmp_path / "out"
    with LocalWeb(root) as web:
        urls = [web.url(name) for name in names]
        pq.write_table(pa.table({"url": urls, "caption": [f"photo {n}" for n in names]}), tmp_path / "urls.parquet")
        assert main(["run", "--recipe", str(tmp_path / "recipe.yaml"), "--input", str(tmp_path / "urls.parquet"),
                     "--output", str(out), "--allow-private-network", "--direct_num_workers=1"]) == 0
    stage = ClipScore(ClipScore.Params(model=tiny_clip.model, pretrained=tiny_clip.pretrained,
                                       model_config=tiny_clip.model_config, threshold=None, store_embeddings=True))
    stage.setup()
    tars = sorted(glob.glob(f"{out}/shards/*.tar"))
    assert len(tars) == 2
    prefix = array_prefix(tiny_clip.model)  # "tiny-clip-test" -> tiny_clip_test_img, tiny_clip_test_txt
    for tar_path in tars:
        arrays = read_npz(tar_path.replace(".tar", ".npz"))
        assert arrays["key"].tolist() == tar_keys(tar_path)
        assert "clip_image_embedding" not in pq.read_table(tar_path.replace(".tar", ".parquet")).column_names
        with tarfile.open(tar_path) as tar:
            recomputed = [Sample(key=key, shard_id=0, url="", caption=tar.extractfile(f"{key}.txt").read().decode(),
                                 image=tar.extractfile(f"{key}.jpg").read()) for key in arrays["key"].tolist()]
        stage.score(recomputed)
        for row, sample in enumerate(recomputed):
            np.testing.assert_allclose(arrays[f"{prefix}_img"][row], sample.fields["clip_image_embedding"], atol=2e-3)
            np.testing.assert_allclose(arrays[f"{prefix}_txt"][row], sample.fields["clip_text_embedding"], atol=2e-3)
    first = read_npz(out / "shards" / "00000.npz")["key"].tolist()
    url_of = dict(zip(pq.read_table(out / "shards" / "00000.parquet").column("key").to_pylist(),
                      pq.read_table(out / "shards" / "00000.parquet").column("url").to_pylist()))
    takedown(str(out), optout(tmp_path, url_of[first[1]]), progress=lambda _: None)
    assert read_npz(out / "shards" / "00000.npz")["key"].tolist() == [first[0], first[2]]
