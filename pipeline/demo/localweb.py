"""A small loopback web server for the demo: serves a folder, plus the fault routes the sample web links to.

The demo uses it to serve the bundled sample "web" without internet (tests
serve their own folders with it too).  It only ever binds to 127.0.0.1.

Fault routes (everything else is served from the folder as static files),
the broken links and opt-out signals of pipeline/demo/sample_web.py:

  /_fault/status/<code>          reply with that status code and a short body
  /_fault/truncated              promise more bytes in Content-Length than sent,
                                 then close the connection
  /_fault/headers[/any/path]?Name=value&...
                                 a small JPEG sent with the given response
                                 headers; the path after headers/ is ignored,
                                 so tests can place it under a robots.txt or
                                 tdmrep.json location

The routes only tests need (slow, drip, flaky, redirects, big, ...) and the
request counts they check are in tests/localweb_faults.py, which extends
`FaultHandler.routes`.
"""
from __future__ import annotations

import functools
import http.server
import io
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Callable


@functools.cache
def tiny_jpeg() -> bytes:
    """A real, decodable 8x8 JPEG."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients hang up on purpose (timeouts, too_large); only real errors are worth printing.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FaultHandler(http.server.SimpleHTTPRequestHandler):
    """Static files, and /_fault/<route>[/<rest>]?<query> answered by `routes[route](self, rest, query)`."""

    protocol_version = "HTTP/1.1"
    routes: dict[str, Callable[["FaultHandler", str, dict[str, str]], None]] = {}  # set below the class

    def log_message(self, format, *args):  # keep test and demo output quiet
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if not url.path.startswith("/_fault/"):
            return super().do_GET()
        query = {name: values[-1] for name, values in urllib.parse.parse_qs(url.query).items()}
        route, _, rest = url.path[len("/_fault/"):].partition("/")
        handler = self.routes.get(route)
        if handler is None:
            return self.reply(404, b"no such fault route", "text/plain")
        handler(self, rest, query)

    def reply(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_unterminated(self, content_type: str, content_length: int | None, headers: dict | None = None):
        """Start a reply whose body ends when the connection closes."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if content_length is not None:
            self.send_header("Content-Length", str(content_length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()


def _status(handler: FaultHandler, rest: str, query: dict[str, str]) -> None:
    handler.reply(int(rest), f"status {rest}".encode(), "text/plain")


def _truncated(handler: FaultHandler, rest: str, query: dict[str, str]) -> None:
    body = tiny_jpeg()
    handler.send_unterminated("image/jpeg", len(body) + 1000)
    handler.wfile.write(body)


def _headers(handler: FaultHandler, rest: str, query: dict[str, str]) -> None:
    handler.reply(200, tiny_jpeg(), "image/jpeg", query)


FaultHandler.routes = {"status": _status, "truncated": _truncated, "headers": _headers}


class LocalWeb:
    """Serve `root` on 127.0.0.1:`port` (0 picks a free port) in a background thread."""

    handler_class: type[FaultHandler] = FaultHandler
    server_class: type[QuietServer] = QuietServer

    def __init__(self, root: str | Path, port: int = 0):
        handler = functools.partial(self.handler_class, directory=str(root))
        self._server = self.server_class(("127.0.0.1", port), handler)
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
