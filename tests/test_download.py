"""The downloader against the loopback server's fault routes (no internet needed)."""
from __future__ import annotations

import dataclasses
import io
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from pipeline.media import download, fetch_rules
from pipeline.media.async_download import AsyncDownloader
from pipeline.media.download import Downloader, DownloadParams, FetchResult, is_public_address, sniff_image_mime
from pipeline.demo.localweb import tiny_jpeg
from pipeline.media.imaging import ResizeParams
from pipeline.core.params import ParamError, build
from pipeline.core.records import Reject, Sample, Verdict
from pipeline.engine.download_images import DownloadHooks, fetch_and_resize
from pipeline.core.stage import DownloadHook
from tests.fetchers import each_fetcher, forbid_connections
from tests.localweb_faults import FaultyWeb

fetcher = each_fetcher(__name__)

# Tiny backoff and timeouts keep the whole module at a few seconds.
LOCAL = DownloadParams(timeout=2.0, retries=2, backoff=0.01, allow_private_network=True)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    (root / "a.jpg").write_bytes(tiny_jpeg())
    (root / "page.html").write_bytes(b"<html><body>hello</body></html>")
    with FaultyWeb(root) as server:
        yield server


@pytest.fixture(autouse=True)
def counts_from_zero(web):
    """Each test (once per fetcher) counts its own requests."""
    web.reset_hits()


def fetch(url: str, params: DownloadParams = LOCAL, expect_image: bool = True) -> FetchResult:
    downloader = Downloader(params)
    try:
        return downloader.fetch(url, expect_image=expect_image)
    finally:
        downloader.close()


def local(**changes) -> DownloadParams:
    return dataclasses.replace(LOCAL, **changes)


def fault(web: FaultyWeb, route: str, **query) -> str:
    """The URL of a fault route, e.g. fault(web, "slow", seconds=3)."""
    return web.url(f"_fault/{route}") + ("?" + urllib.parse.urlencode(query) if query else "")


# --- success --------------------------------------------------------------------

def test_fetches_an_image(web):
    result = fetch(web.url("a.jpg"))
    assert result.reason is None and result.ok
    assert result.data == tiny_jpeg()
    assert result.mime == "image/jpeg"
    assert result.status == 200
    assert result.final_url == result.url == web.url("a.jpg")
    assert result.headers["content-length"] == str(len(tiny_jpeg()))


def test_html_page_is_not_an_image(web):
    assert fetch(web.url("page.html")).reason == "not_an_image"


# --- status codes and retries -----------------------------------------------------

def test_404_is_not_retried(web):
    result = fetch(fault(web, "status/404"))
    assert (result.reason, result.status, result.data) == ("http_404", 404, None)
    assert web.hits("_fault/status/404") == 1


def test_500_fails_after_all_retries(web):
    result = fetch(fault(web, "status/500"), local(retries=2))
    assert (result.reason, result.status) == ("http_500", 500)
    assert web.hits("_fault/status/500") == 3


def test_flaky_503_then_success(web):
    result = fetch(fault(web, "flaky/recovers", fails=2), local(retries=2))
    assert result.ok, result.reason
    assert result.data == tiny_jpeg()
    assert web.hits("_fault/flaky/recovers") == 3


def test_flaky_503_with_too_few_retries(web):
    result = fetch(fault(web, "flaky/gives-up", fails=2), local(retries=1))
    assert result.reason == "http_503"
    assert web.hits("_fault/flaky/gives-up") == 2


def test_connection_refused(web):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert fetch(f"http://127.0.0.1:{port}/a.jpg", local(retries=1)).reason == "connection_error"


def test_dns_failure_is_not_retried(web, monkeypatch):
    calls = []

    def no_such_host(host, port):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(download, "resolve", no_such_host)
    result = fetch("http://no-such-host.invalid/a.jpg", DownloadParams(retries=2, backoff=0.01))
    assert result.reason == "dns_error"
    assert calls == ["no-such-host.invalid"]


def test_backoff_is_deterministic_and_grows():
    first = [fetch_rules.backoff_delay(1.0, "http://x/a", attempt) for attempt in range(4)]
    again = [fetch_rules.backoff_delay(1.0, "http://x/a", attempt) for attempt in range(4)]
    assert first == again
    for attempt, delay in enumerate(first):
        assert 0.5 * 2**attempt <= delay < 1.5 * 2**attempt
    assert fetch_rules.backoff_delay(1.0, "http://x/b", 0) != first[0]  # jitter differs per URL


# --- time limits ----------------------------------------------------------------

def test_slow_server_times_out(web):
    started = time.monotonic()
    result = fetch(fault(web, "slow", seconds=3), local(timeout=0.3, retries=0))
    assert result.reason == "timeout"
    assert time.monotonic() - started < 2


def test_slow_drip_hits_the_deadline(web):
    # Each byte arrives well within the read timeout; only the deadline stops it.
    started = time.monotonic()
    result = fetch(fault(web, "drip", bytes=200, interval=0.05), local(timeout=2.0, deadline=0.6, retries=0))
    assert result.reason == "timeout"
    assert time.monotonic() - started < 2


# --- bodies ------------------------------------------------------------------------

def test_truncated_body(web):
    result = fetch(fault(web, "truncated"), local(retries=0))
    assert result.reason == "incomplete_read"
    assert result.status == 200


def test_html_labelled_as_jpeg_is_rejected(web):
    result = fetch(fault(web, "wrong-type", serve="html"))
    assert result.headers["content-type"] == "image/jpeg"
    assert (result.reason, result.data, result.mime) == ("not_an_image", None, None)


def test_image_labelled_as_html_is_accepted(web):
    result = fetch(fault(web, "wrong-type", serve="image"))
    assert result.headers["content-type"] == "text/html"
    assert result.ok and result.mime == "image/jpeg" and result.data == tiny_jpeg()


def test_empty_body(web):
    assert fetch(fault(web, "empty")).reason == "empty_body"


def test_too_large_by_content_length(web):
    result = fetch(fault(web, "big", bytes=5000), local(max_bytes=4000))
    assert result.reason == "too_large"


def test_too_large_while_streaming_without_content_length(web):
    result = fetch(fault(web, "big", bytes=3_000_000, length="no"), local(max_bytes=100_000))
    assert result.reason == "too_large"
    assert "content-length" not in result.headers


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_an_encoded_body_is_decoded(web, coding):
    """Asked for identity, a server may still compress: the image is the decoded body."""
    result = fetch(fault(web, "encoded", coding=coding))
    assert result.ok, result.reason
    assert result.data == tiny_jpeg()


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compression_bomb_is_too_large_and_stays_bounded(web, coding):
    """50 MB of zeros are ~50 kB compressed: decoding stops past max_bytes (4 MB here), it is not inflated whole."""
    result = fetch(fault(web, "encoded", coding=coding, bytes=50_000_000), local(max_bytes=4_000_000))
    assert (result.reason, result.data) == ("too_large", None)


@pytest.mark.parametrize("length", ["yes", "no"])
def test_body_of_exactly_max_bytes_is_accepted(web, length):
    result = fetch(fault(web, "big", bytes=4000, length=length), local(max_bytes=4000))
    assert result.ok and len(result.data) == 4000 and result.mime == "image/jpeg"


# --- redirects ------------------------------------------------------------------------

def test_redirect_loop(web):
    result = fetch(fault(web, "redirect-loop"), local(max_redirects=3))
    assert result.reason == "too_many_redirects"
    assert web.hits("_fault/redirect-loop") == 4  # the first request and 3 followed hops


@pytest.mark.parametrize("absolute", [True, False])
def test_redirect_to_an_image(web, absolute):
    target = web.url("a.jpg") if absolute else "/a.jpg"
    result = fetch(fault(web, "redirect", to=target))
    assert result.ok, result.reason
    assert result.data == tiny_jpeg()
    assert result.final_url == web.url("a.jpg")


def redirect_chain(web: FaultyWeb, hops: int) -> str:
    url = web.url("a.jpg")
    for _ in range(hops):
        url = fault(web, "redirect", to=url)
    return url


def test_redirect_limit_is_exact(web):
    assert fetch(redirect_chain(web, 3), local(max_redirects=3)).ok
    assert fetch(redirect_chain(web, 4), local(max_redirects=3)).reason == "too_many_redirects"


def test_redirect_to_a_non_http_url(web):
    assert fetch(fault(web, "redirect", to="ftp://example.com/a.jpg")).reason == "invalid_url"


# --- invalid URLs ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "url",
    ["ftp://x", "http://", "not a url", "", "//example.com/a.jpg", "javascript:alert(1)",
     "http://exa mple.com/a.jpg", "http://example.com:99999/a.jpg", "file:///etc/passwd"],
)
def test_invalid_urls(url):
    result = fetch(url, DownloadParams())
    assert (result.reason, result.final_url, result.data) == ("invalid_url", None, None)


@pytest.mark.parametrize("userinfo", ["user:pass@", "user@", ":secret@", "@"])
def test_url_with_credentials_is_refused_before_any_request(web, userinfo):
    url = web.url("a.jpg").replace("http://", f"http://{userinfo}", 1)
    hits_before = web.hits("a.jpg")
    result = fetch(url)
    assert (result.reason, result.data) == ("url_has_credentials", None)
    assert web.hits("a.jpg") == hits_before


def test_redirect_to_a_url_with_credentials_is_refused(web):
    target = web.url("a.jpg").replace("http://", "http://user:pass@", 1)
    result = fetch(fault(web, "redirect", to=target))
    assert result.reason == "url_has_credentials"


# --- SSRF guard ------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "169.254.169.254", "10.0.0.1", "0.0.0.0"])
def test_private_hosts_are_blocked_before_connecting(host, monkeypatch):
    forbid_connections(monkeypatch)
    assert fetch(f"http://{host}/a.jpg", DownloadParams(backoff=0.01)).reason == "blocked_address"


@pytest.fixture
def fresh_web(tmp_path):
    (tmp_path / "a.jpg").write_bytes(tiny_jpeg())
    with FaultyWeb(tmp_path) as server:
        yield server


def test_loopback_is_blocked_by_default(fresh_web):
    assert fetch(fresh_web.url("a.jpg"), DownloadParams(backoff=0.01)).reason == "blocked_address"
    assert fresh_web.hits("a.jpg") == 0
    assert fetch(fresh_web.url("a.jpg")).ok  # control: the same URL works when private is allowed


def loopback_public_for_first_hop_only(monkeypatch, web: FaultyWeb) -> None:
    """Make the loopback server count as public until it has answered the first
    hop, and fail loudly if anything connects after that: a redirect must be
    refused by the address check before connecting, not by luck."""
    real_policy = download.is_public_address
    monkeypatch.setattr(
        download, "is_public_address",
        lambda address: web.hits("_fault/redirect") == 0 or real_policy(address),
    )
    forbid_connections(monkeypatch, allowed=lambda: web.hits("_fault/redirect") == 0)


@pytest.mark.parametrize(
    "target",
    ["a.jpg",  # the same loopback server, a URL that would succeed: only the hop check stops it
     "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]/a.jpg", "http://10.0.0.1/a.jpg"],
)
def test_redirect_hop_is_checked(fresh_web, monkeypatch, target):
    target = fresh_web.url(target) if target == "a.jpg" else target
    loopback_public_for_first_hop_only(monkeypatch, fresh_web)
    result = fetch(fault(fresh_web, "redirect", to=target), DownloadParams(backoff=0.01))
    assert result.reason == "blocked_address"
    assert result.final_url == target
    assert fresh_web.hits("_fault/redirect") == 1  # the first hop really was fetched
    assert fresh_web.hits("a.jpg") == 0


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_peer_check_catches_what_the_address_check_missed(fresh_web, monkeypatch, scheme):
    """The address check is fooled (here: disabled), yet the socket's peer is
    loopback: refused before a byte is sent.  For https the refusal comes
    before the TLS handshake (the server speaks plain HTTP, so reaching the
    handshake would give tls_error instead)."""
    monkeypatch.setattr(download, "check_addresses", lambda host, addresses: None)
    url = fresh_web.url("a.jpg").replace("http:", f"{scheme}:", 1)
    result = fetch(url, DownloadParams(backoff=0.01))
    assert result.reason == "blocked_address"
    assert fresh_web.hits("a.jpg") == 0  # refused before the request was sent


def test_rebinding_answer_is_never_used(fresh_web, monkeypatch):
    """The host is looked up once per hop: the connection goes to that answer
    (127.0.0.2, where nothing listens), never to a second, rebound answer
    (127.0.0.1, the server) that urllib3 would get by looking up again."""
    port = int(fresh_web.base_url.rsplit(":", 1)[1])
    monkeypatch.setattr(download, "resolve", lambda host, p: ["127.0.0.2"])
    monkeypatch.setattr(socket, "getaddrinfo", _rebound_getaddrinfo(socket.getaddrinfo, "rebind.example"))
    result = fetch(f"http://rebind.example:{port}/a.jpg", local(retries=0))
    assert result.reason == "connection_error"
    assert fresh_web.hits("a.jpg") == 0


def _rebound_getaddrinfo(real, name):
    """getaddrinfo that answers loopback for `name` (what a rebinding DNS would say the second time)."""
    def lookup(host, *args, **kwargs):
        return real("127.0.0.1" if host == name else host, *args, **kwargs)
    return lookup


def test_connects_to_the_address_it_looked_up(fresh_web, monkeypatch):
    """One bounded lookup per hop: with it pinned, a name that urllib3 could not resolve still connects."""
    port = int(fresh_web.base_url.rsplit(":", 1)[1])
    monkeypatch.setattr(download, "resolve", lambda host, p: ["127.0.0.1"])
    result = fetch(f"http://pinned.invalid:{port}/a.jpg")
    assert result.ok, result.reason
    assert fresh_web.hits("a.jpg") == 1


def test_check_peer_on_a_real_socket(fresh_web):
    port = int(fresh_web.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        with pytest.raises(download.BlockedAddressError):
            download.check_peer(sock)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.1.2.3", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
     "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1",
     "::1", "::", "fe80::1", "fe80::1%lo", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
     "2002:7f00:1::", "64:ff9b::a9fe:a9fe", "not-an-address", ""],
)
def test_non_public_addresses(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address):
    assert is_public_address(address)


@pytest.mark.parametrize("field, value", [("retries", -1), ("timeout", 0), ("max_bytes", 0), ("threads", 0)])
def test_bad_params_are_refused(field, value):
    with pytest.raises(ParamError, match=field):
        DownloadParams(**{field: value})


def test_params_build_from_recipe_values():
    params = build(DownloadParams, {"timeout": "3", "allow_private_network": "true"}, "download")
    assert params.timeout == 3.0 and params.allow_private_network is True


# --- documents (expect_image=False): robots.txt, tdmrep.json ------------------------------------

def fetch_document(url: str, params: DownloadParams = LOCAL) -> FetchResult:
    return fetch(url, params, expect_image=False)


@pytest.mark.parametrize("via_redirect", [False, True])
def test_document_is_returned_though_not_an_image(web, via_redirect):
    url = fault(web, "redirect", to="/page.html") if via_redirect else web.url("page.html")
    result = fetch_document(url)
    assert result.ok, result.reason
    assert (result.data, result.mime) == (b"<html><body>hello</body></html>", None)
    assert result.final_url == web.url("page.html")


def test_empty_document_is_a_success(web):
    result = fetch_document(fault(web, "empty"))
    assert (result.reason, result.data) == (None, b"")


@pytest.mark.parametrize("status, attempts", [(410, 1), (502, 2)])
def test_document_errors_are_retried_like_images(web, status, attempts):
    route = f"status/{status}"  # statuses no other test uses: the module's server counts hits
    result = fetch_document(fault(web, route), local(retries=1))
    assert (result.reason, result.data) == (f"http_{status}", None)
    assert web.hits(f"_fault/{route}") == attempts


@pytest.mark.parametrize("rebinding", [False, True])
def test_document_fetch_keeps_the_ssrf_guard(fresh_web, tmp_path, monkeypatch, rebinding):
    (tmp_path / "robots.txt").write_text("User-agent: *\nDisallow:\n")  # fresh_web serves tmp_path
    assert fetch_document(fresh_web.url("robots.txt")).ok  # control: fetched when private is allowed
    if rebinding:  # the address check is fooled: only the peer check can refuse
        monkeypatch.setattr(download, "check_addresses", lambda host, addresses: None)
    result = fetch_document(fresh_web.url("robots.txt"), DownloadParams(backoff=0.01))
    assert (result.reason, result.data) == ("blocked_address", None)
    assert fresh_web.hits("robots.txt") == 1  # only the control reached the server


@pytest.mark.parametrize("length", ["yes", "no"])
def test_document_size_cap(web, length):
    result = fetch_document(fault(web, "big", bytes=5000, length=length), local(max_bytes=4000))
    assert (result.reason, result.data) == ("too_large", None)
    assert fetch_document(fault(web, "big", bytes=4000, length=length), local(max_bytes=4000)).ok  # control


# --- robustness ----------------------------------------------------------------------------

def test_fetch_never_raises(web, monkeypatch, fetcher):
    def broken(self, *args):
        raise RuntimeError("bug")

    async def broken_async(self, *args):
        raise RuntimeError("bug")

    if fetcher == "async":
        monkeypatch.setattr(AsyncDownloader, "_get_once", broken_async)
    else:
        monkeypatch.setattr(Downloader, "_get_once", broken)
    result = fetch(web.url("a.jpg"))
    assert (result.reason, result.data) == ("unexpected_error", None)


def test_concurrent_fetches_share_one_downloader(web):
    downloader = Downloader(local(threads=16))
    urls = [web.url("a.jpg") if i % 2 else fault(web, "wrong-type", serve="image", i=i) for i in range(50)]
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(downloader.fetch, urls))
    finally:
        downloader.close()
    assert [r.reason for r in results] == [None] * 50
    assert all(r.data == tiny_jpeg() for r in results)
    assert [r.url for r in results] == urls


# --- sniffing --------------------------------------------------------------------------------

def encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    "fmt, mime",
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp"),
     ("BMP", "image/bmp"), ("TIFF", "image/tiff"), ("AVIF", "image/avif")],
)
def test_sniffs_real_images(fmt, mime):
    assert sniff_image_mime(encoded(fmt)) == mime


def test_sniffs_heic_brand():
    ftyp = (24).to_bytes(4, "big") + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    assert sniff_image_mime(ftyp + b"\x00" * 32) == "image/heic"


@pytest.mark.parametrize(
    "data",
    [b"", b"<html></html>", b"BMW makes cars, not bitmaps", b"%PDF-1.7", b"GIF",
     (20).to_bytes(4, "big") + b"ftypisom\x00\x00\x02\x00isom" + b"\x00" * 16],  # an MP4 video
)
def test_non_images_sniff_as_none(data):
    assert sniff_image_mime(data) is None


# --- one row through the download thread ------------------------------------------------

class _RecordingHook(DownloadHook):
    """A before-download stage that records the URLs it was asked about."""

    name = "recording"

    def __init__(self):
        self.urls = []

    def before_download(self, sample):
        self.urls.append(sample.url)
        return Verdict(True)


def test_row_with_credentials_is_rejected_before_any_stage_sees_it():
    hook = _RecordingHook()
    downloader = Downloader(LOCAL)
    try:
        row = Sample(key="000000", shard_id=0, url="http://user:secret@127.0.0.1:9/a.jpg")
        result = fetch_and_resize(downloader, ResizeParams(), DownloadHooks(around_fetch=(hook,)), row)
    finally:
        downloader.close()
    assert isinstance(result, Reject)
    assert (result.stage, result.reason) == ("download", "url_has_credentials")
    assert hook.urls == []  # a robots.txt check would have sent the password
    assert result.url == "http://***@127.0.0.1:9/a.jpg"  # nor is it kept in the rejects


@pytest.mark.parametrize("url, expected", [
    ("http://user:secret@example.com/a.jpg?x=1#f", "http://***@example.com/a.jpg?x=1#f"),
    ("https://token@example.com:8443/a", "https://***@example.com:8443/a"),
    ("http://a@b:c@example.com/", "http://***@example.com/"),
])
def test_credentials_are_redacted(url, expected):
    assert download.without_credentials(url) == expected


def test_the_event_loop_fetcher_raises_the_open_file_limit():
    """Idle keep-alive sockets of many hosts must not run into a soft limit of 1,024 open files."""
    import resource

    from pipeline.media.async_download import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip("the hard limit leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        assert raise_open_file_limit() > 1024
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 1024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))



class _ThreadRecordingHook(DownloadHook):
    name = "recording"

    def __init__(self, at_once: bool):
        self.at_once, self.threads = at_once, []

    def before_download(self, sample):
        import threading

        self.threads.append(threading.current_thread().name)
        return Verdict(True)

    def answers_at_once(self, sample):
        return self.at_once


@pytest.mark.parametrize("at_once", [True, False])
def test_the_event_loop_runs_a_stage_check_itself_only_when_it_answers_at_once(web, at_once):
    from concurrent.futures import ThreadPoolExecutor as Pool

    from pipeline.engine.download_rows import fetch_row_async
    from pipeline.media.event_loop_pool import EventLoopPool

    hook = _ThreadRecordingHook(at_once)
    loop, hook_threads = EventLoopPool("test-loop"), Pool(1, thread_name_prefix="test-hooks")
    downloader = AsyncDownloader(LOCAL)
    try:
        row = Sample(key="000000", shard_id=0, url=web.url("a.jpg"), caption="a")
        fetched = loop.run(fetch_row_async(downloader, DownloadHooks((hook,)), row, hook_threads=hook_threads))
        loop.run(downloader.close())
    finally:
        loop.shutdown()
        hook_threads.shutdown()
    assert fetched.ok
    assert hook.threads == ["test-loop" if at_once else "test-hooks_0"]


def test_a_hook_that_keeps_the_default_check_answers_at_once():
    class OnlyResponses(DownloadHook):
        pass

    class Checks(DownloadHook):
        def before_download(self, sample):
            return Verdict(True)

    row = Sample(key="000000", shard_id=0, url="http://a.example/x.jpg", caption="a")
    assert OnlyResponses().answers_at_once(row)
    assert not Checks().answers_at_once(row)


def test_the_event_loop_fetcher_keeps_the_addresses_of_recent_hosts_only(monkeypatch):
    """A run over millions of hosts must not keep every host's pinned addresses."""
    from pipeline.media import async_download

    monkeypatch.setattr(async_download, "_PINNED_HOSTS", 3)
    downloader = AsyncDownloader(LOCAL)
    for i in range(10):
        downloader._pin(f"host{i}.example", 80, ["192.0.2.1"])
    assert list(downloader._pinned) == [("host7.example", 80), ("host8.example", 80), ("host9.example", 80)]
