"""A short bounded run of the list-reader fuzzer (tests/fuzz/fuzz_readers.py), so CI runs it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.launch import fresh_process

pytest.importorskip("atheris")
HERE = Path(__file__).parent


@pytest.mark.slow
def test_fuzz_readers_short_run(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [
        sys.executable, str(HERE / "fuzz_readers.py"),
        "-max_total_time=20", "-max_len=1024", "-rss_limit_mb=4096", "-seed=1",
        f"-dict={HERE / 'readers.dict'}", f"-artifact_prefix={tmp_path}/",
        str(corpus), str(HERE / "corpus"),
    ]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent)}
    result = subprocess.run(fresh_process(command), capture_output=True, text=True, env=env, timeout=120)
    log = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("INFO: Instrumenting"))
    assert result.returncode == 0, log[-4000:]
    assert "Done" in log and "runs in" in log
