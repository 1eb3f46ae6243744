"""A local Beam worker, as the runner starts it: hands itself to the fork server and waits.

Run as `python -S forkserver_client.py FOLDER` (standard library only, so it
starts in ~20 ms): connects to FOLDER's socket, sends its standard streams,
environment and working directory, and exits with the forked worker's exit
code.  If no server answers (it failed, or is not up within WAIT seconds),
it runs the ordinary worker in its place.  See pipeline/engine/worker_forkserver.py.
"""
import json
import os
import socket
import struct
import sys
import time

SOCKET_NAME, FAILED_NAME = "workers.sock", "failed"  # as in worker_forkserver
HEADER, STATUS = struct.Struct("!I"), struct.Struct("!i")
WAIT = 60.0  # seconds for the server to finish its imports; it needs ~3 on a loaded 2-core machine
FALLBACK = [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"]


def connect(folder: str):
    """A connection to the server; None if there is none to wait for."""
    deadline = time.monotonic() + WAIT
    refused = 0
    while time.monotonic() < deadline:
        if not os.path.isdir(folder) or os.path.exists(os.path.join(folder, FAILED_NAME)):
            return None  # closed, or it could not start
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(os.path.join(folder, SOCKET_NAME))
            return connection
        except FileNotFoundError:
            pass  # still importing: the socket appears when it is ready
        except ConnectionRefusedError:
            refused += 1  # bound but not listening: for a moment after bind, or for good if it died
            if refused > 50:
                connection.close()
                return None
        connection.close()
        time.sleep(0.02)
    return None


def main() -> int:
    connection = connect(sys.argv[1])
    if connection is None:
        os.execv(sys.executable, FALLBACK)
    body = json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}).encode()
    socket.send_fds(connection, [HEADER.pack(len(body))], [0, 1, 2])
    connection.sendall(body)
    status = b""
    while len(status) < STATUS.size:
        chunk = connection.recv(STATUS.size - len(status))
        if not chunk:
            sys.stderr.write("curate: the worker fork server exited before its worker\n")
            return 1
        status += chunk
    return STATUS.unpack(status)[0]


if __name__ == "__main__":
    sys.exit(main())
