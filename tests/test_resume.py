"""A run killed mid-way resumes from its checkpoints and ends as an uninterrupted run would."""
import glob
import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.localweb_faults import FaultyWeb

ROWS = 40
PER_SHARD = 10
PER_TASK = 5  # two download tasks per shard

RECIPE = """\
download: {threads: 2, retries: 0, rows_per_task: %d}
output: {samples_per_shard: %d}
stages:
  - caption: {min_words: 2}
  - dedup_exact
""" % (PER_TASK, PER_SHARD)


@pytest.fixture()
def setup(tmp_path):
    (tmp_path / "web").mkdir()
    with FaultyWeb(tmp_path / "web") as web:
        # Every image is the same small JPEG: all but the first are duplicates, so
        # the resumed run must see restored samples in the global dedup stage.
        rows = [{"url": web.url(f"_fault/slow?seconds=0.15&id={i}"), "caption": f"slow picture number {i}"}
                for i in range(ROWS)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        (tmp_path / "recipe.yaml").write_text(RECIPE)
        yield tmp_path, web


def args(tmp_path, output):
    return ["run", "--recipe", str(tmp_path / "recipe.yaml"), "--input", str(tmp_path / "urls.parquet"),
            "--output", str(output), "--allow-private-network", "--direct_num_workers=1"]


def digests(output):
    files = sorted(glob.glob(f"{output}/shards/*") + glob.glob(f"{output}/rejects/*"))
    return {os.path.relpath(p, output): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}


@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_run(setup):
    tmp_path, web = setup
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args(tmp_path, killed)], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(glob.glob(f"{killed}/_work/*.ckpt.parquet")) < 2:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert not (killed / "_SUCCESS").exists()
    checkpointed = len(glob.glob(f"{killed}/_work/*.ckpt.parquet"))
    fetched_before = web.hits("/_fault/slow")

    assert main(args(tmp_path, killed)) == 0
    refetched = web.hits("/_fault/slow") - fetched_before
    assert refetched <= ROWS - checkpointed * PER_TASK  # finished tasks were not downloaded again
    assert not (killed / "_work").exists()

    uninterrupted = tmp_path / "uninterrupted"
    assert main(args(tmp_path, uninterrupted)) == 0
    assert digests(killed) == digests(uninterrupted)
    assert len(pq.read_table(glob.glob(f"{killed}/shards/*.parquet")[0])) == 1  # one kept, the rest duplicates


def test_resume_with_other_download_settings_is_refused(setup, capsys):
    tmp_path, _ = setup
    output = tmp_path / "out"
    (output / "_work").mkdir(parents=True)
    (output / "_work" / "manifest.json").write_text('{"version": "0", "sha256": "other"}')
    assert main(args(tmp_path, output)) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_resume_with_an_edited_input_of_the_same_size_is_refused(setup, stop_before_success, capsys):
    tmp_path, _ = setup
    urls = tmp_path / "urls.jsonl"
    urls.write_text("".join(f'{{"url": "http://127.0.0.1:9/{i}.jpg", "caption": "old caption {i:03d}"}}\n'
                            for i in range(ROWS)))
    argv = [*args(tmp_path, tmp_path / "out")]
    argv[argv.index(str(tmp_path / "urls.parquet"))] = str(urls)
    stop_before_success(argv)
    left = sorted(os.listdir(tmp_path / "out" / "rejects"))
    assert left
    size = urls.stat().st_size
    urls.write_text(urls.read_text().replace("old caption", "new caption"))
    assert urls.stat().st_size == size
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"input {urls} changed" in err and "--overwrite" in err
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert sorted(os.listdir(tmp_path / "out" / "rejects")) == left  # refused before anything was removed


def test_a_forged_checkpoint_is_downloaded_again_and_never_unpickled(setup, stop_before_success):
    tmp_path, web = setup
    output = tmp_path / "out"
    checkpoints = stop_before_success(args(tmp_path, output))
    assert len(checkpoints) == ROWS // PER_TASK
    pwned = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(pwned), "w"))

    forged = [{"key": "0000000", "record": pickle.dumps(Exploit())}]
    pq.write_table(pa.Table.from_pylist(forged), checkpoints[0])
    fetched_before = web.hits("/_fault/slow")

    assert main(args(tmp_path, output)) == 0
    assert not pwned.exists()
    assert web.hits("/_fault/slow") - fetched_before == PER_TASK  # only the forged task is fetched again
    uninterrupted = tmp_path / "uninterrupted"
    assert main(args(tmp_path, uninterrupted)) == 0
    assert digests(output) == digests(uninterrupted)
