"""Two malloc arenas for the launching process and the local worker processes."""
import sys

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.engine import malloc
from pipeline.engine.run import _local_runner


def test_local_workers_start_with_few_arenas_and_a_users_setting_wins(monkeypatch):
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    monkeypatch.delenv(malloc.ENV, raising=False)
    command = _local_runner(options)._default_environment.command_string
    assert command.startswith(f"MALLOC_ARENA_MAX={malloc.ARENA_MAX} ")
    monkeypatch.setenv(malloc.ENV, "4")
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert _local_runner(options)._default_environment.command_string.startswith("MALLOC_ARENA_MAX=4 ")
    assert malloc.limit_arenas() is False  # the user's value is left alone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_this_process_can_cap_its_arenas(monkeypatch):
    monkeypatch.delenv(malloc.ENV, raising=False)
    assert malloc.limit_arenas() is True
