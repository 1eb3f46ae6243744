"""open_clip's own trainer reads curate's shards, in curate's environment.

A real `curate run` over a small loopback web writes WebDataset shards; then
`python -m open_clip_train.main --dataset-type webdataset` trains a tiny
randomly initialised CLIP on them for two steps on the CPU.  This fails when
the pinned webdataset and open_clip_torch disagree (webdataset >= 0.2.96
yields an end-of-shard marker that open_clip_train 3.3.0's
`group_by_keys_nothrow` reads as a file: `KeyError: 'fname'`).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.demo.run_demo import write_url_list
from pipeline.demo.localweb import LocalWeb
from pipeline.demo.sample_web import generate_sample_web
from tests.filters.tiny_openclip import TINY_CLIP_CONFIG

BATCH_SIZE = 4
STEPS = 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("train-web")
    rows = generate_sample_web(root / "site", n_rows=60, seed=0)
    with LocalWeb(root / "site") as web:
        url_list = write_url_list(rows, web, root / "urls.parquet")
        assert main(["run", "--recipe", "local-sample", "--input", str(url_list), "--output", str(root / "out"),
                     "--allow-private-network", "--set", "output.samples_per_shard=16"]) == 0
    return sorted((root / "out" / "shards").glob("*.tar"))


def brace_pattern(tars: list[Path]) -> str:
    """The shards as one webdataset URL, '<dir>/{00000,00001,...}.tar': whatever shard numbers exist."""
    return f"{tars[0].parent}/{{{','.join(tar.stem for tar in tars)}}}.tar"


def tiny_model_dir(directory: Path) -> Path:
    """A tiny architecture as an open_clip 'local-dir:' model folder (config only: trained from scratch)."""
    directory.mkdir()
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}))
    return directory


@pytest.mark.slow
def test_open_clip_trainer_trains_on_curated_shards(shards, tmp_path):
    assert len(shards) >= 2  # several shards: the end-of-shard marker between them is what broke
    command = [
        sys.executable, "-m", "open_clip_train.main",
        "--dataset-type", "webdataset", "--train-data", brace_pattern(shards),
        "--train-num-samples", str(BATCH_SIZE * STEPS), "--batch-size", str(BATCH_SIZE), "--epochs", "1",
        "--workers", "0", "--device", "cpu", "--model", f"local-dir:{tiny_model_dir(tmp_path / 'model')}",
        "--lr", "1e-3", "--warmup", "1", "--seed", "0", "--report-to", "",
        "--logs", str(tmp_path / "logs"), "--name", "tiny", "--save-frequency", "1",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert f"[{BATCH_SIZE * STEPS}/{BATCH_SIZE * STEPS} (100%)]" in output, output[-3000:]
    checkpoint = torch.load(tmp_path / "logs" / "tiny" / "checkpoints" / "epoch_1.pt", weights_only=False)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values())
