"""A short, bounded atheris run of the image decode path (tests/fuzz/fuzz_imaging.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.launch import fresh_process

pytest.importorskip("atheris")

HARNESS = Path(__file__).parent / "fuzz" / "fuzz_imaging.py"


@pytest.mark.slow
def test_decoder_survives_a_short_fuzz_run(tmp_path):
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(HARNESS), "--seed-corpus", str(corpus)], check=True, timeout=60)
    run = subprocess.run(
        fresh_process([sys.executable, str(HARNESS), str(corpus), "-max_total_time=25", "-timeout=10",
                       "-rss_limit_mb=2048", "-max_len=65536", f"-artifact_prefix={tmp_path}/",
                       "-print_final_stats=1"]),
        capture_output=True, text=True, timeout=180,
    )
    findings = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(("crash-", "timeout-", "oom-")))
    assert run.returncode == 0 and not findings, f"{findings}\n{run.stderr[-4000:]}"
