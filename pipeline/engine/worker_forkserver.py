"""Local worker processes forked from one that has already imported Beam and the pipeline.

A Beam worker process (`python -m apache_beam.runners.worker.sdk_worker_main`)
spends ~2.4 s of CPU importing Beam and the pipeline's modules before its
first bundle, and on a local run every worker does it at once, after the
launcher has built the graph: two workers on two cores held a run's first
download back by ~2 s (benchmarks/README.md, "Start-up").

`serving()` starts one server process as soon as a run knows it will use
local worker processes.  The server imports those modules while the launcher
builds the graph, then forks one child per worker the runner starts.  The
runner's command for a worker (`worker_command`) is a small stdlib-only
client (pipeline/engine/forkserver_client.py, run with `python -S`): it hands
the server its environment (Beam's service addresses, the options, the
worker id), working directory and standard streams, then waits for the
child's exit status and exits with it, so to the runner it *is* the worker.
If the server is not there (it failed, or never came up) the client runs the
ordinary worker command instead.

The server forks before it starts any thread or gRPC channel (it only
imports), so its children start clean; Python reseeds `random` in each.  A
child whose client goes away (the runner killed the worker) is killed; the
server exits when the launcher closes its stdin (or dies).
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import runpy
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Iterator

from pipeline.engine import malloc

SOCKET_NAME = "workers.sock"
FAILED_NAME = "failed"  # written by a server that could not start: clients fall back at once
WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"
# What a worker imports before its first bundle: Beam's worker, and the modules the pipeline's
# functions are unpickled from.
PRELOADED = (WORKER_MODULE, "pipeline.engine.run", "PIL.Image", "PIL.JpegImagePlugin", "PIL.PngImagePlugin")
HEADER = struct.Struct("!I")  # the length of the JSON request that follows the file descriptors
STATUS = struct.Struct("!i")  # the child's exit code, sent back to the client

WORKER_LOG_DIR = Path(tempfile.gettempdir()) / "curate-worker-logs"

_server: "ForkServer | None" = None  # started, not yet closed


def worker_log_path() -> Path:
    """Where this process's local worker processes (and their fork server) write their stderr."""
    return WORKER_LOG_DIR / f"{os.getpid()}.log"


class ForkServer:
    """The launcher's handle on a running server process."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="curate-workers-"))
        WORKER_LOG_DIR.mkdir(parents=True, exist_ok=True)
        with open(worker_log_path(), "ab") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(self.folder)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                env={**os.environ, malloc.ENV: malloc.arena_max()},  # the workers inherit its malloc settings
            )

    def worker_command(self) -> str:
        """The shell command the runner runs for each worker."""
        client = Path(__file__).with_name("forkserver_client.py")
        return f"{shlex.quote(sys.executable)} -S {shlex.quote(str(client))} {shlex.quote(str(self.folder))}"

    def close(self, kill: bool = False) -> None:
        """Ends the server: at once with `kill` (it was not needed), else when it has finished its work."""
        if kill:
            self._process.kill()
        if self._process.stdin:
            self._process.stdin.close()  # the server's signal to exit
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for name in (SOCKET_NAME, FAILED_NAME):
            (self.folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


def start() -> None:
    """Starts the server now, before it is known to be needed (`curate run` does, first thing, so its
    imports overlap the launcher's own); `serving` then uses it or kills it."""
    global _server
    if _server is None:
        _server = ForkServer()


def discard() -> None:
    """Kills a server that will not be used."""
    global _server
    if _server is not None:
        server, _server = _server, None
        server.close(kill=True)


atexit.register(discard)  # a run that ended before using it (a refused input, an error)


@contextlib.contextmanager
def serving(enabled: bool) -> Iterator[ForkServer | None]:
    """A server for the block's local worker processes if `enabled` (`worker_command` gives its client);
    else none, and one started early is killed."""
    global _server
    if not enabled:
        discard()
        yield None
        return
    start()
    try:
        yield _server
    finally:
        server, _server = _server, None
        if server is not None:
            server.close()


def worker_command(default: str) -> str:
    """The command for a local worker: the running server's client, else `default`."""
    return _server.worker_command() if _server is not None else default


# ---------------------------------------------------------------- the server process


def serve(folder: Path) -> None:
    try:
        for module in PRELOADED:
            __import__(module)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(folder / SOCKET_NAME))
        listener.listen(64)
    except BaseException:
        traceback.print_exc()
        (folder / FAILED_NAME).touch()
        raise
    _Server(listener).loop()
    # Skip the interpreter's finalization: with Beam and the pipeline imported it took ~0.7 s, on the
    # run's tail (the launcher waits for the server), and the server has nothing to flush or clean up.
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(0)


class _Server:
    def __init__(self, listener: socket.socket):
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "launcher")
        self._children: dict[int, socket.socket] = {}

    def loop(self) -> None:
        while True:
            for key, _ in self._selector.select(timeout=0.2):
                if key.data == "accept":
                    self._accept()
                elif key.data == "launcher":
                    if not os.read(key.fd, 4096):
                        return  # the launcher is done (or gone)
                else:
                    self._client_gone(key.data)
            self._reap()

    def _accept(self) -> None:
        connection, _ = self._listener.accept()
        try:
            fds, request = _receive(connection)
        except (OSError, ValueError):
            traceback.print_exc()
            connection.close()
            return
        pid = os.fork()
        if pid == 0:
            self._listener.close()
            for other in self._children.values():
                other.close()
            connection.close()
            _run_worker(fds, request)  # never returns
        for fd in fds:
            os.close(fd)
        self._children[pid] = connection
        self._selector.register(connection, selectors.EVENT_READ, pid)

    def _client_gone(self, pid: int) -> None:
        """The client's end closed before its child finished: the runner stopped that worker."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = self._children.pop(pid, None)
            if connection is None:
                continue
            self._selector.unregister(connection)
            with contextlib.suppress(OSError):
                connection.sendall(STATUS.pack(os.waitstatus_to_exitcode(status)))
            connection.close()


def _receive(connection: socket.socket) -> tuple[list[int], dict]:
    header, fds, _, _ = socket.recv_fds(connection, HEADER.size, 3)
    if len(header) != HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("a malformed request from a worker client")
    (length,) = HEADER.unpack(header)
    body = b""
    while len(body) < length:
        chunk = connection.recv(length - len(body))
        if not chunk:
            raise ValueError("a worker client closed its request early")
        body += chunk
    return fds, json.loads(body)


def _run_worker(fds: list[int], request: dict) -> None:
    """In the forked child: become the worker the client stands for, then exit."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = [WORKER_MODULE]
        runpy.run_module(WORKER_MODULE, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - a worker's crash is reported by its exit code and traceback
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
