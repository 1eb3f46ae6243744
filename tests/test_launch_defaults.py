"""How `curate run` picks the local runner's processes when the user did not (pipeline.tools.launch)."""
from __future__ import annotations

import dataclasses
import gzip
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.engine.run import InputSpec
from pipeline.tools import launch
from pipeline.tools.launch import IN_PROCESS_ARGS, SMALL_INPUT_ROWS, default_beam_args, estimated_rows

MULTI = [f"--direct_num_workers={os.cpu_count() or 1}", "--direct_running_mode=multi_processing"]


@pytest.mark.parametrize("rows, expected", [(10, list(IN_PROCESS_ARGS)), (SMALL_INPUT_ROWS, list(IN_PROCESS_ARGS)),
                                            (SMALL_INPUT_ROWS + 1, MULTI), (None, MULTI)])
def test_small_inputs_run_in_this_process_and_others_in_one_worker_per_core(rows, expected):
    assert default_beam_args(["--x=1"], rows)[:3] == ["--x=1", *expected]


@pytest.mark.parametrize("given", [["--direct_num_workers=3"], ["--direct_running_mode=multi_processing"],
                                   ["--direct_running_mode=in_memory"], ["--runner=DataflowRunner"]])
def test_the_users_choice_is_kept_whatever_the_size(given):
    for rows in (1, 10**9, None):
        args = default_beam_args(list(given), rows)
        assert not any(a in args for a in (*IN_PROCESS_ARGS, *MULTI) if a not in given)


def _parquet(path, rows):
    pq.write_table(pa.table({"url": [f"http://x/{i}" for i in range(rows)]}), path)
    return str(path)


def test_estimated_rows_counts_parquet_rows_and_text_by_size(tmp_path):
    text = tmp_path / "urls.csv"
    text.write_text("url,caption\n" + "".join(f"http://example.com/{i:04d}.jpg,a caption of words {i}\n"
                                              for i in range(100)))
    packed = tmp_path / "more.tsv.gz"
    packed.write_bytes(gzip.compress(b"x" * 10_000))
    paths = (_parquet(tmp_path / "a.parquet", 1234), _parquet(tmp_path / "b.parquet", 66), str(text), str(packed))
    assert estimated_rows(InputSpec(paths[:2])) == 1300  # Parquet's own count
    text_rows = estimated_rows(InputSpec((str(text),)))
    assert 60 <= text_rows <= 100  # by size: never fewer than there are over 64 bytes a row
    size = packed.stat().st_size
    assert estimated_rows(InputSpec((str(packed),))) == size * 4 // 64  # compressed: about 4x its size


def test_estimated_rows_is_unknown_for_crawls_and_unreadable_files(tmp_path):
    warc = tmp_path / "pages.warc.gz"
    warc.write_bytes(b"")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    assert estimated_rows(InputSpec((str(warc),))) is None  # pages link any number of images
    assert estimated_rows(InputSpec((str(broken),))) is None  # the run reports it, not this guess
    assert estimated_rows(InputSpec((str(tmp_path / "gone.csv"),))) is None


def test_a_small_run_says_it_runs_in_this_process(tmp_path):
    path = _parquet(tmp_path / "urls.parquet", 5)
    said = []
    result = launch.run_job("local-sample", [path], str(tmp_path / "out"), say=said.append)
    assert result.audit["counts"]["input"] == 5
    assert any("small input: the rows run in this process" in line for line in said)
    said.clear()
    launch.run_job("local-sample", [path], str(tmp_path / "out2"), ["--direct_num_workers=1"], say=said.append)
    assert not any("small input" in line for line in said)  # the user chose


def test_estimated_rows_stops_reading_once_the_count_is_enough(tmp_path):
    broken = tmp_path / "z-broken.parquet"
    broken.write_bytes(b"not parquet")  # would make the estimate unknown if it were opened
    spec = InputSpec((_parquet(tmp_path / "a.parquet", 1234), str(broken)))
    assert estimated_rows(spec) is None
    assert estimated_rows(spec, enough=SMALL_INPUT_ROWS + 1) == 1234


def test_no_file_is_opened_to_count_rows_when_the_user_chose_where_they_run(tmp_path, monkeypatch):
    def not_wanted(*args, **kwargs):
        raise AssertionError("rows counted although the options decide")

    monkeypatch.setattr(launch, "estimated_rows", not_wanted)
    path = _parquet(tmp_path / "urls.parquet", 5)
    result = launch.run_job("local-sample", [path], str(tmp_path / "out"), ["--direct_num_workers=1"])
    assert result.audit["counts"]["input"] == 5


@pytest.mark.parametrize("rows, fetcher", [(10, "threads"), (SMALL_INPUT_ROWS + 1, "async")])
def test_auto_fetcher_is_threads_in_this_process_and_async_in_worker_processes(rows, fetcher):
    """A small input runs in the launcher, where importing aiohttp would cost more than it saves."""
    from pipeline.engine import runners
    from pipeline.engine.recipe import load_recipe
    from pipeline.engine.run import RunOptions, runs_in_this_process
    from pipeline.tools.launch import with_fetcher_chosen

    options = runners.expand(RunOptions(default_beam_args([], rows)))
    recipe = load_recipe("manifests/local-sample.yaml")
    assert recipe.download.fetcher == "auto"
    assert with_fetcher_chosen(recipe, runs_in_this_process(options)).download.fetcher == fetcher
    explicit = with_fetcher_chosen(recipe, True)
    explicit.sections["download"] = dataclasses.replace(explicit.download, fetcher="async")
    assert with_fetcher_chosen(explicit, True).download.fetcher == "async"  # a choice the user made stands
