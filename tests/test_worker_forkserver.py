"""Local worker processes forked from a server that has already imported them (pipeline.engine.worker_forkserver)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline import cli
from pipeline.engine import forkserver_client, worker_forkserver


def _run_worker_command(server: worker_forkserver.ForkServer, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(server.worker_command(), shell=True, env=env, capture_output=True, timeout=180)


def test_client_and_server_agree_on_the_protocol():
    # The client is stdlib-only (it runs with `python -S`), so it repeats the server's names.
    assert (forkserver_client.SOCKET_NAME, forkserver_client.FAILED_NAME) == (
        worker_forkserver.SOCKET_NAME, worker_forkserver.FAILED_NAME)
    assert (forkserver_client.HEADER.format, forkserver_client.STATUS.format) == (
        worker_forkserver.HEADER.format, worker_forkserver.STATUS.format)
    assert forkserver_client.FALLBACK[1:] == ["-m", worker_forkserver.WORKER_MODULE]


def test_a_forked_worker_runs_in_the_server_with_the_clients_environment_and_streams_and_its_exit_code_returns():
    # Without Beam's service addresses the worker fails at once: its traceback reaches the client's
    # stderr from the forked child (the server's frames are in it) and its exit code is the client's.
    env = {k: v for k, v in os.environ.items() if k != "CONTROL_API_SERVICE_DESCRIPTOR"}
    with worker_forkserver.serving(True) as server:
        result = _run_worker_command(server, env)
        again = _run_worker_command(server, env)  # one server, many workers
    for finished in (result, again):
        stderr = finished.stderr.decode()
        assert finished.returncode == 1, stderr
        assert "KeyError: 'CONTROL_API_SERVICE_DESCRIPTOR'" in stderr
        assert "worker_forkserver.py" in stderr  # forked by the server, not the fallback
    assert not server.folder.exists()  # closed: socket and folder removed


def test_the_client_runs_the_ordinary_worker_when_the_server_could_not_start(tmp_path, monkeypatch):
    (tmp_path / worker_forkserver.FAILED_NAME).touch()
    started = []

    def execv(path, args):
        started.append((path, args))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(sys, "argv", ["forkserver_client.py", str(tmp_path)])
    with pytest.raises(SystemExit):
        forkserver_client.main()
    assert started == [(sys.executable, forkserver_client.FALLBACK)]


def test_a_server_that_is_not_needed_is_killed_and_none_is_used():
    worker_forkserver.start()
    server = worker_forkserver._server
    with worker_forkserver.serving(False) as unused:
        assert unused is None
        assert worker_forkserver.worker_command("default") == "default"
    assert server._process.poll() is not None  # killed, not left importing
    assert not server.folder.exists()


def test_the_server_exits_when_the_launcher_closes_it_and_forks_no_more():
    with worker_forkserver.serving(True) as server:
        command = server.worker_command()
    assert server._process.returncode == 0  # it ended by itself (skipping the interpreter's finalization)
    # A worker started after that falls back to the ordinary command (here: exits 1 as above, unforked).
    env = {k: v for k, v in os.environ.items() if k != "CONTROL_API_SERVICE_DESCRIPTOR"}
    result = subprocess.run(command, shell=True, env=env, capture_output=True, timeout=180)
    assert result.returncode == 1
    assert "worker_forkserver.py" not in result.stderr.decode()


@pytest.mark.parametrize("argv, expected", [
    (["run", "--recipe", "r", "--input", "i", "--output", "o"], True),
    (["run", "--direct_num_workers=2", "--direct_running_mode=multi_processing"], True),
    (["run", "--direct_running_mode=in_memory"], False),
    (["run", "--runner=DataflowRunner"], False),
    (["run", "--engine", "flink-local"], False),
    (["run", "--dry_run=True"], False),
    (["run", "--help"], False),
    (["report", "out"], False),
    ([], False),
])
def test_curate_run_starts_the_server_first_thing_only_when_it_may_use_worker_processes(argv, expected, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert cli._may_start_worker_processes(argv) is expected


def test_no_server_on_one_core(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # it would only take the launcher's core
    assert not cli._may_start_worker_processes(["run", "--input", "i"])
