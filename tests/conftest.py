"""Fixtures shared by the end-to-end tests."""
import glob
import os

import pytest

from pipeline.cli import main


@pytest.fixture()
def stop_before_success(monkeypatch):
    """Runs `curate` with these arguments, stopped after every download and before _SUCCESS:
    an unfinished output folder with its checkpoints, as a killed run leaves (in-process, no kill)."""
    from pipeline.engine import audit

    def fail(*_args, **_kwargs):
        raise RuntimeError("stopped before _SUCCESS by the test")

    def run(argv):
        with monkeypatch.context() as patch:
            patch.setattr(audit, "finalize", fail)
            assert main(argv) == 2
        output = argv[argv.index("--output") + 1]
        assert not os.path.exists(f"{output}/_SUCCESS")
        return sorted(glob.glob(f"{output}/_work/*.ckpt.parquet"))

    return run
