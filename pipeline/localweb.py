"""A small loopback web server: serves a folder, plus fault routes for tests.

The demo uses it to serve the bundled sample "web" and the tests use it to
download without internet.  It only ever binds to 127.0.0.1.

Fault routes (everything else is served from the folder as static files):

  /_fault/status/<code>          reply with that status code and a short body
  /_fault/flaky/<id>?fails=N     reply 503 to the first N (default 1) requests
                                 for <id>, then a small JPEG
  /_fault/slow?seconds=S         sleep S seconds, then send a small JPEG
  /_fault/drip?bytes=N&interval=S  send a JPEG header + padding, one byte every
                                 S seconds (a slow-drip server)
  /_fault/truncated              promise more bytes in Content-Length than sent,
                                 then close the connection
  /_fault/wrong-type?serve=html  an HTML page labelled image/jpeg
  /_fault/wrong-type?serve=image a real JPEG labelled text/html
  /_fault/redirect-loop          302 to itself, forever
  /_fault/redirect?to=URL        302 to URL (may be relative)
  /_fault/big?bytes=N            N bytes: a JPEG header + padding; add
                                 &length=no to omit Content-Length and end the
                                 body by closing the connection, &length=M to
                                 declare M bytes whatever is sent, or
                                 &length=chunked to send it in 64 kB chunks
  /_fault/empty                  200 with an empty body
  /_fault/headers[/any/path]?Name=value&...
                                 a small JPEG sent with the given response
                                 headers; the path after headers/ is ignored,
                                 so tests can place it under a robots.txt or
                                 tdmrep.json location

`LocalWeb.hits(path)` counts the requests seen for a path (without query), so
tests can check how often a client retried.
"""
from __future__ import annotations

import collections
import functools
import http.server
import io
import sys
import threading
import time
import urllib.parse
from pathlib import Path

_JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
_HTML = b"<!doctype html><html><body><h1>Not an image</h1></body></html>"


@functools.cache
def tiny_jpeg() -> bytes:
    """A real, decodable 8x8 JPEG."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()


def _padded_jpeg(size: int) -> bytes:
    """`size` bytes that sniff as JPEG (they do not decode: tests only need the magic)."""
    return (_JPEG_HEADER + b"\x00" * max(0, size - len(_JPEG_HEADER)))[:size]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self.hit_counts: collections.Counter[str] = collections.Counter()
        self.hit_lock = threading.Lock()

    def handle_error(self, request, client_address):
        # Tests hang up on purpose (timeouts, too_large); only real errors are worth printing.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def count_hit(self, path: str) -> int:
        with self.hit_lock:
            self.hit_counts[path] += 1
            return self.hit_counts[path]


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # keep test and demo output quiet
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        hit = self.server.count_hit(url.path)
        if not url.path.startswith("/_fault/"):
            return super().do_GET()
        query = {name: values[-1] for name, values in urllib.parse.parse_qs(url.query).items()}
        route, _, rest = url.path[len("/_fault/"):].partition("/")
        handler = self._FAULTS.get(route)
        if handler is None:
            return self._reply(404, b"no such fault route", "text/plain")
        handler(self, rest, query, hit)

    # --- helpers -----------------------------------------------------------

    def _reply(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_unterminated(self, content_type: str, content_length: int | None, headers: dict | None = None):
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

    # --- fault routes: (self, rest of path, query, hit number for this path) --

    def _status(self, rest, query, hit):
        self._reply(int(rest), f"status {rest}".encode(), "text/plain")

    def _flaky(self, rest, query, hit):
        if hit <= int(query.get("fails", 1)):
            self._reply(503, b"try again", "text/plain")
        else:
            self._reply(200, tiny_jpeg(), "image/jpeg")

    def _slow(self, rest, query, hit):
        time.sleep(float(query.get("seconds", 1)))
        self._reply(200, tiny_jpeg(), "image/jpeg")

    def _drip(self, rest, query, hit):
        body = _padded_jpeg(int(query.get("bytes", 1000)))
        interval = float(query.get("interval", 0.1))
        self._send_unterminated("image/jpeg", len(body))
        for i in range(len(body)):
            self.wfile.write(body[i : i + 1])
            self.wfile.flush()
            time.sleep(interval)

    def _truncated(self, rest, query, hit):
        body = tiny_jpeg()
        self._send_unterminated("image/jpeg", len(body) + 1000)
        self.wfile.write(body)

    def _wrong_type(self, rest, query, hit):
        if query.get("serve") == "image":
            self._reply(200, tiny_jpeg(), "text/html")
        else:
            self._reply(200, _HTML, "image/jpeg")

    def _redirect_loop(self, rest, query, hit):
        self._reply(302, b"", "text/plain", {"Location": "/_fault/redirect-loop"})

    def _redirect(self, rest, query, hit):
        self._reply(302, b"", "text/plain", {"Location": query["to"]})

    def _big(self, rest, query, hit):
        size, length = int(query.get("bytes", 1_000_000)), query.get("length", "yes")
        block = 64 * 1024
        body = _padded_jpeg(size)
        chunked = length == "chunked"
        if chunked:
            self._send_unterminated("image/jpeg", None, {"Transfer-Encoding": "chunked"})
        else:
            declared = {"yes": size, "no": None}[length] if length in ("yes", "no") else int(length)
            self._send_unterminated("image/jpeg", declared)
        for start in range(0, size, block):
            data = body[start : start + block]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _empty(self, rest, query, hit):
        self._reply(200, b"", "image/jpeg")

    def _headers(self, rest, query, hit):
        self._reply(200, tiny_jpeg(), "image/jpeg", query)

    _FAULTS = {
        "status": _status,
        "flaky": _flaky,
        "slow": _slow,
        "drip": _drip,
        "truncated": _truncated,
        "wrong-type": _wrong_type,
        "redirect-loop": _redirect_loop,
        "redirect": _redirect,
        "big": _big,
        "empty": _empty,
        "headers": _headers,
    }


class LocalWeb:
    """Serve `root` on 127.0.0.1:`port` (0 picks a free port) in a background thread."""

    def __init__(self, root: str | Path, port: int = 0):
        handler = functools.partial(_Handler, directory=str(root))
        self._server = _Server(("127.0.0.1", port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def hits(self, path: str) -> int:
        """How many requests reached `path` (query string ignored)."""
        key = "/" + urllib.parse.urlsplit(path).path.lstrip("/")
        with self._server.hit_lock:
            return self._server.hit_counts[key]

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
