"""A small loopback web server: serves a folder, plus fault routes for tests.

The demo uses it to serve the bundled sample "web" and the tests use it to
download without internet.  It only ever binds to 127.0.0.1.
"""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test and demo output quiet
        pass

    # TODO(downloader work): fault routes under /_fault/... for tests.


class LocalWeb:
    """Serve `root` on 127.0.0.1:`port` (0 picks a free port) in a background thread."""

    def __init__(self, root: str | Path, port: int = 0):
        handler = functools.partial(_Handler, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def start(self) -> "LocalWeb":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "LocalWeb":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
