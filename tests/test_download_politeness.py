"""Retry-After on 429/503 and the per-host connection cap, against a loopback server."""
from __future__ import annotations

import dataclasses
import email.utils
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline import download
from pipeline.download import Downloader, DownloadParams
from pipeline.localweb import tiny_jpeg

PARAMS = DownloadParams(timeout=5.0, retries=2, backoff=0.01, deadline=10.0, allow_private_network=True)


class Script:
    """What the server answers: `refusals` times `status` with `retry_after`, then a JPEG after `delay`."""

    def __init__(self, status=503, refusals=0, retry_after=None, delay=0.0):
        self.status, self.refusals, self.retry_after, self.delay = status, refusals, retry_after, delay
        self.hits, self.in_flight, self.most_in_flight = 0, 0, 0
        self.lock = threading.Lock()


@pytest.fixture
def server():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with script.lock:
                script.hits += 1
                hit = script.hits
                script.in_flight += 1
                script.most_in_flight = max(script.most_in_flight, script.in_flight)
            try:
                self._answer(hit)
            except OSError:  # the client gave up (deadline tests)
                pass
            finally:
                with script.lock:
                    script.in_flight -= 1

        def _answer(self, hit):
            time.sleep(script.delay)
            refused = hit <= script.refusals
            body = b"busy" if refused else tiny_jpeg()
            self.send_response(script.status if refused else 200)
            if refused and script.retry_after is not None:
                self.send_header("Retry-After", script.retry_after)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    script.url = f"http://127.0.0.1:{httpd.server_address[1]}/a.jpg"
    yield script
    httpd.shutdown()
    httpd.server_close()


def timed_fetch(url, params=PARAMS):
    downloader = Downloader(params)
    started = time.monotonic()
    try:
        return downloader.fetch(url), time.monotonic() - started
    finally:
        downloader.close()


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(server, status):
    server.status, server.refusals, server.retry_after = status, 1, "1"
    result, seconds = timed_fetch(server.url)
    assert result.ok and server.hits == 2
    assert seconds >= 1.0  # not the 0.01 s backoff


def test_retry_after_http_date_is_honoured(server):
    server.refusals = 1
    server.retry_after = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: waits 1-2 s
    result, seconds = timed_fetch(server.url)
    assert result.ok and server.hits == 2
    assert seconds >= 0.9


@pytest.mark.parametrize("retry_after", ["3600", email.utils.formatdate(time.time() + 3600, usegmt=True)])
def test_retry_after_past_the_deadline_gives_up_at_once(server, retry_after):
    server.status, server.refusals, server.retry_after = 429, 5, retry_after
    result, seconds = timed_fetch(server.url)
    assert (result.reason, server.hits) == ("http_429", 1)
    assert seconds < 1.0


@pytest.mark.parametrize("value", ["soon", "", "-5", "Thu, 01 Jan 1970 00:00:00 GMT"])
def test_unusable_or_past_retry_after_falls_back_to_backoff(server, value):
    server.refusals, server.retry_after = 1, value
    result, seconds = timed_fetch(server.url)
    assert result.ok and seconds < 1.0


def test_retry_after_is_ignored_on_other_statuses():
    failure = download._Failure("http_500", 500, {"retry-after": "30"})
    assert download._retry_after(failure) == 0.0
    assert download._retry_after(download._Failure("http_503", 503, {"retry-after": "30"})) == 30.0


def test_connections_per_host_are_capped(server):
    server.delay = 0.3
    downloader = Downloader(dataclasses.replace(PARAMS, max_connections_per_host=2, threads=8))
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: downloader.fetch(server.url), range(8)))
    finally:
        downloader.close()
    assert all(result.ok for result in results)
    assert server.most_in_flight == 2


def test_waiting_for_a_host_slot_counts_against_the_deadline(server):
    server.delay = 2.0
    downloader = Downloader(dataclasses.replace(PARAMS, max_connections_per_host=1, deadline=1.0, retries=0))
    try:
        with ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            results = list(pool.map(lambda _: downloader.fetch(server.url), range(2)))
            seconds = time.monotonic() - started
    finally:
        downloader.close()
    assert [result.reason for result in results] == ["timeout", "timeout"]
    assert seconds < 2.5 and server.hits == 1  # the second never got a slot, so never connected
