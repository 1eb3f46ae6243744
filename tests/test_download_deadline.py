"""`download.deadline` bounds the whole fetch against servers that answer slowly at any point.

Each server here is a raw loopback socket that sends a scripted prefix and then
drips one byte per `DRIP` seconds, far inside the read timeout, so only the
deadline can end the fetch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time

import pytest

from pipeline.media import download
from pipeline.media.download import Downloader, DownloadParams
from tests.fetchers import each_fetcher

fetcher = each_fetcher(__name__)

DRIP = 0.05
DEADLINE = 0.8
SLACK = 1.0  # the watchdog acts within milliseconds; the rest is a loaded machine
PARAMS = DownloadParams(timeout=3.0, retries=2, backoff=0.01, deadline=DEADLINE, allow_private_network=True)


class ScriptedServer:
    """Accepts connections on loopback; each gets `prefix`, then one `drip_byte` per DRIP seconds forever."""

    def __init__(self, prefix: bytes, drip_byte: bytes = b"a", answer: bool = True):
        self._prefix, self._drip_byte, self._answer = prefix, drip_byte, answer
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                conn, _ = self._listener.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            if self._answer:
                conn.sendall(self._prefix)
            while not self._stop.wait(DRIP):
                if self._answer:
                    conn.sendall(self._drip_byte)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


@contextlib.contextmanager
def server(prefix: bytes, drip_byte: bytes = b"a", answer: bool = True):
    scripted = ScriptedServer(prefix, drip_byte, answer)
    try:
        yield scripted
    finally:
        scripted.close()


def timed_fetch(url: str, params: DownloadParams = PARAMS):
    downloader = Downloader(params)
    started = time.monotonic()
    try:
        return downloader.fetch(url), time.monotonic() - started
    finally:
        downloader.close()


# A TLS handshake record header announcing 16 KiB: the client waits for all of it.
_TLS_RECORD_HEADER = b"\x16\x03\x03\x40\x00"

SLOW_PHASES = {
    "status_line": (b"HTTP/1.1 2", b"0"),
    "status_reason": (b"HTTP/1.1 200 O", b"K"),
    "header_value": (b"HTTP/1.1 200 OK\r\nX-Drip: ", b"a"),
    "header_lines": (b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n"),
    "redirect_headers": (b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nX-Drip: ", b"a"),
    "chunked_body": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\xff\xd8\xff\xe0\r\n", b"1\r\na\r\n"),
}


@pytest.mark.parametrize("phase", sorted(SLOW_PHASES))
def test_dripping_server_ends_at_the_deadline(phase, fetcher):
    prefix, drip_byte = SLOW_PHASES[phase]
    with server(prefix, drip_byte) as slow:
        result, seconds = timed_fetch(f"http://127.0.0.1:{slow.port}/a.jpg")
    if fetcher == "async" and phase == "status_line":
        # aiohttp's parser refuses a fourth digit of the status code as it arrives (http.client waits for the
        # end of the line): a malformed answer, at once
        assert result.reason == "connection_error"
    else:
        assert result.reason == "timeout"
    assert seconds < DEADLINE + SLACK


def test_dripping_tls_handshake_ends_at_the_deadline():
    with server(_TLS_RECORD_HEADER, b"\x00") as slow:
        result, seconds = timed_fetch(f"https://127.0.0.1:{slow.port}/a.jpg")
    assert result.reason == "timeout"
    assert seconds < DEADLINE + SLACK


def test_server_that_accepts_and_never_answers():
    with server(b"", answer=False) as silent:
        result, seconds = timed_fetch(f"http://127.0.0.1:{silent.port}/a.jpg")
    assert result.reason == "timeout"
    assert seconds < DEADLINE + SLACK


def test_slow_redirect_chain_is_bounded_as_a_whole():
    # Every hop is quick enough for the read timeout, the chain is not.
    hop = b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n"
    with server(hop, b"") as redirecting:
        params = dataclasses.replace(PARAMS, max_redirects=1000)
        result, seconds = timed_fetch(f"http://127.0.0.1:{redirecting.port}/a.jpg", params)
    assert result.reason in ("timeout", "too_many_redirects")
    assert seconds < DEADLINE + SLACK


def test_slow_dns_ends_at_the_deadline(monkeypatch):
    def hanging_lookup(host, port):
        time.sleep(3)
        return ["127.0.0.1"]

    monkeypatch.setattr(download, "resolve", hanging_lookup)
    result, seconds = timed_fetch("http://slow-dns.example/a.jpg", dataclasses.replace(PARAMS, allow_private_network=False))
    assert result.reason == "timeout"
    assert seconds < DEADLINE + SLACK

