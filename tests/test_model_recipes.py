"""The model recipes end to end over the bundled sample, with tiny open_clip models a user would point at."""
import glob
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.demo.run_demo import write_url_list
from pipeline.demo.localweb import LocalWeb
from pipeline.demo.sample_web import generate_sample_web
from tests.filters.tiny_openclip import save_tiny_clip, save_tiny_coca


@pytest.fixture(scope="module")
def sample_list(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    rows = generate_sample_web(root / "site", n_rows=90, seed=3)
    with LocalWeb(root / "site") as web:
        yield write_url_list(rows, web, root / "urls.parquet")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def run_recipe(recipe, sample_list, output, *overrides):
    args = ["run", "--recipe", f"manifests/{recipe}.yaml", "--input", str(sample_list), "--output", str(output),
            "--allow-private-network", "--set", "output.samples_per_shard=30"]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0
    return json.loads((output / "report" / "audit.json").read_text())


def clip_overrides(stage, model):
    return [f"{stage}.model={model.model}", f"{stage}.pretrained={model.pretrained}",
            f"{stage}.model_config={model.model_config}"]


def table(output, folder):
    tables = [pq.read_table(p) for p in sorted(glob.glob(f"{output}/{folder}/*.parquet"))]
    return pa.concat_tables(tables, promote_options="default").to_pylist() if tables else []


def assert_counts_add_up(audit):
    counts = audit["counts"]
    rejected = sum(sum(r.values()) for r in counts["rejected_by_stage"].values())
    assert counts["input"] == 90 == counts["kept"] + rejected


@pytest.mark.slow
def test_laion_style_runs_every_stage_with_real_inference(sample_list, tiny_clip, tmp_path):
    # A random model's similarities sit around 0: threshold 0 keeps some and drops some.
    audit = run_recipe("laion-style", sample_list, tmp_path / "out", *clip_overrides("clip_score", tiny_clip),
                       "clip_score.threshold=0.0")
    assert_counts_add_up(audit)
    kept = table(tmp_path / "out", "shards")
    assert kept and all(row["clip_score"] >= 0.0 for row in kept)
    for field in ("lang", "lang_score", "nsfw_score", "watermark_score", "phash"):
        assert all(row[field] is not None for row in kept), field
    low = [r for r in table(tmp_path / "out", "rejects") if r["reason"] == "low_clip_score"]
    assert low and all(json.loads(r["fields"])["clip_score"] < 0.0 for r in low)
    assert "clip_score" in audit["distributions"]["scores"]


@pytest.mark.slow
def test_datacomp_clip_keeps_the_top_fraction(sample_list, tiny_clip, tmp_path):
    audit = run_recipe("datacomp-clip", sample_list, tmp_path / "out", *clip_overrides("clip_score", tiny_clip),
                       "language.languages=en,de,fr,es,it,pt,ja,zh,ru,ar", "resolution.min_side=32")
    assert_counts_add_up(audit)
    kept = table(tmp_path / "out", "shards")
    below = [r for r in table(tmp_path / "out", "rejects") if r["reason"] == "below_top_fraction"]
    scored = len(kept) + len(below)
    assert len(kept) == -(-3 * scored // 10)  # ceil(30%), no ties among random scores
    assert min(r["clip_score"] for r in kept) > max(json.loads(r["fields"])["clip_score"] for r in below)
    assert len(kept[0]["clip_image_embedding"]) == 32


@pytest.mark.slow
def test_capfilt_recaptions_and_records_the_choice(sample_list, tiny_clip, tmp_path):
    coca = save_tiny_coca(tmp_path / "coca")
    audit = run_recipe(
        "capfilt", sample_list, tmp_path / "out",
        f"recaption.coca_model={coca.model}", f"recaption.coca_pretrained={coca.pretrained}",
        f"recaption.coca_model_config={coca.model_config}", "recaption.max_length=8",
        *clip_overrides("recaption", tiny_clip), *clip_overrides("clip_score", tiny_clip),
        "clip_score.threshold=-1.0",
    )
    assert_counts_add_up(audit)
    kept = table(tmp_path / "out", "shards")
    assert kept
    for row in kept:
        assert row["caption_choice"] in ("original", "synthetic")
        chosen = row["caption_synthetic"] if row["caption_choice"] == "synthetic" else row["caption_original"]
        assert row["caption"] == chosen
        assert isinstance(row["caption_synthetic"], str)
