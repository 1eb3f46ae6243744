"""The output folder: nothing the user wrote is deleted, one run at a time, never read back as input."""
import json
import os
import socket
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main

ROWS = 6
LOCK = "_curate.lock"  # the documented name (README, docs/guarantees.md)
RECIPE = "output: {samples_per_shard: 4}\nstages:\n  - caption: {min_words: 2}\n"


@pytest.fixture()
def job(tmp_path):
    """A recipe and an input whose URLs are refused at once (loopback without the flag): a run of seconds."""
    (tmp_path / "in").mkdir()
    rows = [{"url": f"http://127.0.0.1:9/{i}.jpg", "caption": f"picture number {i}"} for i in range(ROWS)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "urls.parquet")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    return tmp_path


def run_args(job, output, *inputs):
    inputs = inputs or (str(job / "in" / "urls.parquet"),)
    return ["run", "--recipe", str(job / "recipe.yaml"), *[a for i in inputs for a in ("--input", i)],
            "--output", str(output), "--direct_num_workers=1"]


def user_files(folder):
    """A folder someone filled by hand: a report, a shard-looking file and a recipe.json of their own."""
    files = {"report/q3.txt": "quarterly numbers", "shards/my-own-shard.bin": "mine", "recipe.json": '{"mine": 1}'}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return files


def contents(folder, names):
    return {name: (folder / name).read_text() if (folder / name).exists() else None for name in names}


def test_a_folder_curate_did_not_write_is_refused_and_left_alone(job, capsys):
    victim = job / "victim"
    files = user_files(victim)
    assert main(run_args(job, victim)) == 2
    err = capsys.readouterr().err
    assert "not a curate output folder" in err and "--overwrite" in err and "report/q3.txt" in err
    assert contents(victim, files) == files
    assert sorted(p.name for p in victim.iterdir()) == ["recipe.json", "report", "shards"]  # nothing added


def test_overwrite_removes_only_the_files_of_curates_layout(job, capsys):
    victim = job / "victim"
    user_files(victim)
    assert main([*run_args(job, victim), "--overwrite"]) == 0
    assert (victim / "report/q3.txt").read_text() == "quarterly numbers"
    assert (victim / "shards/my-own-shard.bin").read_text() == "mine"
    assert json.loads((victim / "recipe.json").read_text())["stages"]  # curate's name: replaced, as documented
    out = capsys.readouterr().out
    assert "kept 2 other file(s)" in out and "report/q3.txt" in out


def test_resuming_an_unfinished_run_keeps_files_the_user_added(job, stop_before_success):
    output = job / "out"
    stop_before_success(run_args(job, output))
    (output / "shards").mkdir(exist_ok=True)
    (output / "shards/notes.txt").write_text("my notes")
    (output / "README.md").write_text("what this folder is")
    assert main(run_args(job, output)) == 0
    assert (output / "_SUCCESS").exists()
    assert (output / "shards/notes.txt").read_text() == "my notes"
    assert (output / "README.md").read_text() == "what this folder is"


def test_an_output_that_names_a_file_is_a_clear_error(job, capsys):
    existing = job / "taken.txt"
    existing.write_text("a file")
    assert main(run_args(job, existing)) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert existing.read_text() == "a file"


@pytest.mark.parametrize("pattern, output", [("in", "in"), ("in/**", "in/out"), ("*/*.parquet", "in")])
def test_an_output_inside_an_input_glob_is_refused(job, capsys, pattern, output):
    assert main(run_args(job, job / output, str(job / pattern))) == 2
    assert "is inside the input" in capsys.readouterr().err
    assert sorted(os.listdir(job / "in")) == ["urls.parquet"]


def test_an_output_beside_its_input_is_fine(job):
    assert main(run_args(job, job / "in" / "out", str(job / "in"))) == 0


def lock_of(pid):
    """The lock a run with this pid on this machine holds (pipeline.engine.output_folder's documented format)."""
    return json.dumps({"pid": pid, "host": socket.gethostname(), "started_at": "2026-01-01T00:00:00+00:00",
                       "token": "theirs"})


def test_a_second_run_on_an_output_in_use_is_refused(job, capsys):
    output = job / "out"
    output.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        (output / LOCK).write_text(lock_of(running.pid))
        try:
            assert main(run_args(job, output)) == 2
        finally:
            running.kill()
    assert f"another curate run is writing to this folder (pid {running.pid}" in capsys.readouterr().err
    assert sorted(os.listdir(output)) == [LOCK]  # the holder's lock is left as it was, nothing written


def test_the_lock_of_a_run_that_is_gone_is_taken_over(job):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    output = job / "out"
    output.mkdir()
    (output / LOCK).write_text(lock_of(gone.pid))
    assert main(run_args(job, output)) == 0
    assert (output / "_SUCCESS").exists() and not (output / LOCK).exists()


def test_run_job_runs_the_same_job_as_curate_run(job):
    from pipeline import run_job  # the library entry point

    assert main(run_args(job, job / "cli")) == 0
    result = run_job(str(job / "recipe.yaml"), [str(job / "in" / "urls.parquet")], str(job / "library"),
                     ["--direct_num_workers=1"])
    assert result.audit["counts"] == json.loads((job / "cli/report/audit.json").read_text())["counts"]
    for name in ("recipe.json", "rejects/00000.parquet", "rejects/00001.parquet", "report/audit.html", "_SUCCESS"):
        assert (job / "library" / name).exists()
    assert (job / "library/recipe.json").read_text() == (job / "cli/recipe.json").read_text()


def test_a_run_is_refused_while_a_takedown_holds_the_folder(job, capsys):
    from pipeline.engine.output_lock import lock_output_folder

    output = job / "out"
    assert main(run_args(job, output)) == 0
    (output / "_SUCCESS").unlink()  # as during a takedown's switch
    with lock_output_folder(str(output)):
        assert main(run_args(job, output)) == 2
    assert "in use by another curate run or takedown" in capsys.readouterr().err
    assert not (output / LOCK).exists()  # the run's own lock file was given back
