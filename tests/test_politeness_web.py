"""Per-host politeness end to end: a dead host costs a few timeouts, a throttling host is waited for, DNS is cached."""
from __future__ import annotations

import asyncio
import dataclasses
import http.server
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.media import download
from pipeline.cli import main
from pipeline.media.dns_cache import DnsCache, DnsTimeout
from pipeline.media.download import Downloader, DownloadParams


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(out, "JPEG")
    return out.getvalue()


class DeadHost:
    """Accepts connections and never answers; counts them."""

    def __init__(self, address: str):
        self.sock = socket.create_server((address, 0))
        self.port = self.sock.getsockname()[1]
        self.connections, self.held = 0, []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


class ThrottlingHost(http.server.ThreadingHTTPServer):
    """Answers 429 with Retry-After: 1 to any request beyond `limit` in flight; counts them."""

    daemon_threads = True

    def __init__(self, address: str, limit: int):
        self.limit, self.in_flight, self.throttled, self.served, self.peak = limit, 0, 0, 0, 0
        self.lock = threading.Lock()
        self.image = jpeg()
        super().__init__((address, 0), _ThrottlingHandler)


class _ThrottlingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.in_flight += 1
            server.peak = max(server.peak, server.in_flight)
            over = server.in_flight > server.limit
        try:
            if over:
                with server.lock:
                    server.throttled += 1
                self.send_response(429)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            time.sleep(0.05)
            with server.lock:
                server.served += 1
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(server.image)))
            self.end_headers()
            self.wfile.write(server.image)
        finally:
            with server.lock:
                server.in_flight -= 1


@pytest.fixture()
def hosts():
    dead = DeadHost("127.0.0.3")
    busy = ThrottlingHost("127.0.0.2", limit=2)
    threading.Thread(target=busy.serve_forever, daemon=True).start()
    yield dead, busy
    busy.shutdown()
    busy.server_close()
    dead.close()


def test_a_dead_host_costs_a_few_timeouts_and_a_throttling_host_loses_nothing(tmp_path, hosts):
    dead, busy = hosts
    urls = [f"http://127.0.0.3:{dead.port}/{i}.jpg" for i in range(40)]
    urls += [f"http://127.0.0.2:{busy.server_address[1]}/{i}.jpg" for i in range(40)]
    pq.write_table(pa.table({"url": urls, "caption": [f"picture number {i}" for i in range(len(urls))]}),
                   tmp_path / "urls.parquet")
    (tmp_path / "recipe.yaml").write_text(
        "download: {timeout: 1, retries: 0, threads: 16, per_host_connections: 4, breaker_failures: 2,\n"
        "           breaker_cooldown: 600, throttle_retries: 20}\n"
        "output: {samples_per_shard: 100}\nstages: []\n"
    )
    started = time.monotonic()
    assert main(["run", "--recipe", str(tmp_path / "recipe.yaml"), "--input", str(tmp_path / "urls.parquet"),
                 "--output", str(tmp_path / "out"), "--allow-private-network", "--direct_num_workers=1"]) == 0
    seconds = time.monotonic() - started
    audit = json.loads((tmp_path / "out" / "report" / "audit.json").read_text())
    counts = audit["counts"]
    assert counts["kept"] == 40  # every row of the throttling host, in the end
    reasons = counts["rejected_by_stage"]["download"]
    assert sum(reasons.values()) == 40 and set(reasons) <= {"timeout", "host_unavailable"}
    assert dead.connections <= 2 + 4  # the breaker's streak plus what was in flight, not one per row
    assert reasons["host_unavailable"] >= 40 - 6
    assert busy.throttled < 40  # the host was paused, not hammered
    assert seconds < 60
    hosts = {row["host"]: row for row in audit["download"]["hosts"]["top"]}
    dead_row, busy_row = hosts[f"127.0.0.3:{dead.port}"], hosts[f"127.0.0.2:{busy.server_address[1]}"]
    assert (dead_row["rows"], dead_row["downloaded"], dead_row["host_unavailable"]) == (40, 0, reasons["host_unavailable"])
    assert (busy_row["rows"], busy_row["downloaded"], busy_row["success_rate"]) == (40, 40, 1.0)
    assert busy_row["throttled_answers"] == busy.throttled  # every 429 the server sent is in the table
    page = (tmp_path / "out" / "report" / "audit.html").read_text()
    assert f"127.0.0.3:{dead.port}" in page and "host_unavailable" in page


def test_a_hosts_connection_cap_holds_while_its_bodies_wait_for_the_decoding_threads(tmp_path):
    """A row gives its host's connection back when its response is in hand, before its decode: the server
    still never sees more than `per_host_connections` requests at once, and every row is kept."""
    server = ThrottlingHost("127.0.0.4", limit=1000)  # counts its peak; throttles nobody
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        urls = [f"http://127.0.0.4:{server.server_address[1]}/{i}.jpg" for i in range(60)]
        pq.write_table(pa.table({"url": urls, "caption": [f"picture number {i}" for i in range(60)]}),
                       tmp_path / "urls.parquet")
        (tmp_path / "recipe.yaml").write_text(
            "download: {threads: 16, per_host_connections: 2, per_host_rate: 0}\nstages: []\n")
        assert main(["run", "--recipe", str(tmp_path / "recipe.yaml"), "--input", str(tmp_path / "urls.parquet"),
                     "--output", str(tmp_path / "out"), "--allow-private-network", "--direct_num_workers=1"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert json.loads((tmp_path / "out" / "report" / "audit.json").read_text())["counts"]["kept"] == 60
    assert server.served == 60 and server.peak == 2


# ---------------------------------------------------------------- DNS cache


class FakeClock:
    now = 0.0

    def __call__(self):
        return self.now


_LOOKUP_THREADS = ThreadPoolExecutor(max_workers=2)


@pytest.fixture(params=["thread", "event_loop"])
def resolve(request):
    """resolve(cache, host, port, seconds): `DnsCache.resolve`, or its event loop's `resolve_on_loop`."""
    if request.param == "thread":
        return lambda cache, *args: cache.resolve(*args)
    return lambda cache, *args: asyncio.run(cache.resolve_on_loop(*args, _LOOKUP_THREADS))


def test_dns_answers_are_cached_for_their_ttl(resolve):
    calls, clock = [], FakeClock()
    cache = DnsCache(300, 30, lambda host, port: calls.append(host) or ["1.2.3.4"], clock)
    assert resolve(cache, "Example.com", 80, 5) == ["1.2.3.4"]
    assert resolve(cache, "example.com", 80, 5) == ["1.2.3.4"]
    assert calls == ["Example.com"]
    clock.now = 301
    resolve(cache, "example.com", 80, 5)
    assert len(calls) == 2


def test_the_dns_cache_keeps_the_most_recent_hosts_only(resolve):
    calls = []
    cache = DnsCache(300, 30, lambda host, port: calls.append(host) or ["1.2.3.4"], FakeClock(), max_hosts=2)
    for host in ("a.example", "b.example", "c.example"):
        resolve(cache, host, 80, 5)
    assert cache.cached("b.example", 80) == cache.cached("c.example", 80) == ["1.2.3.4"]
    assert cache.cached("a.example", 80) is None  # the oldest went first
    resolve(cache, "a.example", 80, 5)
    assert calls == ["a.example", "b.example", "c.example", "a.example"]


def test_a_name_that_does_not_exist_is_remembered_for_the_negative_ttl(resolve):
    calls, clock = [], FakeClock()

    def missing(host, port):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    cache = DnsCache(300, 30, missing, clock)
    for _ in range(3):
        with pytest.raises(socket.gaierror):
            resolve(cache, "nope.example", 80, 5)
    assert len(calls) == 1
    clock.now = 31
    with pytest.raises(socket.gaierror):
        resolve(cache, "nope.example", 80, 5)
    assert len(calls) == 2


def test_dns_timeout_is_not_dns_error_and_is_not_cached(resolve):
    calls = []

    def again(host, port):
        calls.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    cache = DnsCache(300, 30, again)
    for _ in range(2):
        with pytest.raises(DnsTimeout):
            resolve(cache, "flaky.example", 80, 5)
    assert len(calls) == 2

    def slow(host, port):
        time.sleep(2)
        return ["1.2.3.4"]

    started = time.monotonic()
    with pytest.raises(DnsTimeout):
        resolve(DnsCache(300, 30, slow), "slow.example", 80, 0.2)
    assert time.monotonic() - started < 1.5  # the caller stopped waiting; the lookup goes on in the background


def test_the_ssrf_guard_checks_a_cached_answer_every_time(monkeypatch):
    lookups = []
    monkeypatch.setattr(download, "resolve", lambda host, port: lookups.append(host) or ["127.0.0.1"])
    downloader = Downloader(dataclasses.replace(DownloadParams(), retries=0))
    for _ in range(3):
        assert downloader.fetch("http://internal.example/a.jpg").reason == "blocked_address"
    assert lookups == ["internal.example"]  # one lookup, three refusals


def test_dns_timeout_reason_from_a_fetch(monkeypatch):
    def again(host, port):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(download, "resolve", again)
    result = Downloader(dataclasses.replace(DownloadParams(), retries=0)).fetch("http://flaky.example/a.jpg")
    assert result.reason == "dns_timeout"
