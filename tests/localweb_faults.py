"""The demo's loopback server with the fault routes only tests need, and request counts.

`FaultyWeb` serves a folder like `pipeline.demo.localweb.LocalWeb` (with its
status, truncated and headers routes) and adds:

  /_fault/flaky/<id>?fails=N     reply 503 to the first N (default 1) requests
                                 for <id>, then a small JPEG
  /_fault/slow?seconds=S         sleep S seconds, then send a small JPEG
  /_fault/drip?bytes=N&interval=S  send a JPEG header + padding, one byte every
                                 S seconds (a slow-drip server)
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
  /_fault/encoded?coding=gzip&bytes=N  a small JPEG (or, with bytes=N, N zero bytes: a
                                 compression bomb) sent Content-Encoding gzip or
                                 deflate, though the client asked for identity

`FaultyWeb.hits(path)` counts the requests seen for a path (without query), so
tests can check how often a client retried.
"""
from __future__ import annotations

import collections
import gzip
import threading
import time
import urllib.parse
import zlib

from pipeline.demo.localweb import FaultHandler, LocalWeb, QuietServer, tiny_jpeg

_JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
_HTML = b"<!doctype html><html><body><h1>Not an image</h1></body></html>"


def _padded_jpeg(size: int) -> bytes:
    """`size` bytes that sniff as JPEG (they do not decode: tests only need the magic)."""
    return (_JPEG_HEADER + b"\x00" * max(0, size - len(_JPEG_HEADER)))[:size]


class _CountingServer(QuietServer):
    def __init__(self, address, handler):
        super().__init__(address, handler)
        self.hit_counts: collections.Counter[str] = collections.Counter()
        self.hit_lock = threading.Lock()

    def count_hit(self, path: str) -> int:
        with self.hit_lock:
            self.hit_counts[path] += 1
            return self.hit_counts[path]


class _TestHandler(FaultHandler):
    server: _CountingServer
    hit = 0  # this request's number among the requests for its path

    def do_GET(self):
        self.hit = self.server.count_hit(urllib.parse.urlsplit(self.path).path)
        super().do_GET()


# --- test-only fault routes: (handler, rest of path, query) -----------------


def _flaky(handler: _TestHandler, rest, query):
    if handler.hit <= int(query.get("fails", 1)):
        handler.reply(503, b"try again", "text/plain")
    else:
        handler.reply(200, tiny_jpeg(), "image/jpeg")


def _slow(handler, rest, query):
    time.sleep(float(query.get("seconds", 1)))
    handler.reply(200, tiny_jpeg(), "image/jpeg")


def _drip(handler, rest, query):
    body = _padded_jpeg(int(query.get("bytes", 1000)))
    interval = float(query.get("interval", 0.1))
    handler.send_unterminated("image/jpeg", len(body))
    for i in range(len(body)):
        handler.wfile.write(body[i : i + 1])
        handler.wfile.flush()
        time.sleep(interval)


def _wrong_type(handler, rest, query):
    if query.get("serve") == "image":
        handler.reply(200, tiny_jpeg(), "text/html")
    else:
        handler.reply(200, _HTML, "image/jpeg")


def _redirect_loop(handler, rest, query):
    handler.reply(302, b"", "text/plain", {"Location": "/_fault/redirect-loop"})


def _redirect(handler, rest, query):
    handler.reply(302, b"", "text/plain", {"Location": query["to"]})


def _big(handler, rest, query):
    size, length = int(query.get("bytes", 1_000_000)), query.get("length", "yes")
    block = 64 * 1024
    body = _padded_jpeg(size)
    chunked = length == "chunked"
    if chunked:
        handler.send_unterminated("image/jpeg", None, {"Transfer-Encoding": "chunked"})
    else:
        declared = {"yes": size, "no": None}[length] if length in ("yes", "no") else int(length)
        handler.send_unterminated("image/jpeg", declared)
    for start in range(0, size, block):
        data = body[start : start + block]
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
    if chunked:
        handler.wfile.write(b"0\r\n\r\n")


def _encoded(handler, rest, query):
    coding = query.get("coding", "gzip")
    plain = b"\0" * int(query["bytes"]) if "bytes" in query else tiny_jpeg()
    packed = gzip.compress(plain) if coding == "gzip" else zlib.compress(plain)
    handler.reply(200, packed, "image/jpeg", {"Content-Encoding": coding})


def _empty(handler, rest, query):
    handler.reply(200, b"", "image/jpeg")


_TestHandler.routes = {
    **FaultHandler.routes,
    "flaky": _flaky,
    "slow": _slow,
    "drip": _drip,
    "wrong-type": _wrong_type,
    "redirect-loop": _redirect_loop,
    "redirect": _redirect,
    "big": _big,
    "empty": _empty,
    "encoded": _encoded,
}


class FaultyWeb(LocalWeb):
    """`LocalWeb` with the test-only fault routes and request counts."""

    handler_class = _TestHandler
    server_class = _CountingServer

    def reset_hits(self) -> None:
        """Forget the request counts (a module's server shared by tests run once per fetcher)."""
        with self._server.hit_lock:
            self._server.hit_counts.clear()

    def hits(self, path: str) -> int:
        """How many requests reached `path` (query string ignored)."""
        key = "/" + urllib.parse.urlsplit(path).path.lstrip("/")
        with self._server.hit_lock:
            return self._server.hit_counts[key]
