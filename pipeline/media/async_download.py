"""Fetch on an event loop (aiohttp): the thread fetcher's results, reasons and guards, for thousands of
requests in flight on one thread.

`AsyncDownloader.fetch(url)` is a coroutine with the contract of
pipeline.media.download's `Downloader.fetch`: it never raises, and fails with
the same reasons (listed there).  Everything a fetch decides (URL checks,
redirects, retries, body limits, results) comes from
pipeline.media.fetch_rules, so only the transport differs:

* the whole-fetch deadline is `asyncio.timeout` around every hop, retry,
  header and body read: a server dripping its headers or body is cut at the
  deadline as with the thread fetcher's watchdog;
* the SSRF guard: one bounded lookup per hop (the shared `DnsCache`; a
  lookup runs on a thread, never on the loop), every address checked, and
  the connector resolves the host to exactly those addresses; the socket
  factory refuses any non-public address it is asked to connect to, before
  the connection (and so before a byte or a TLS hello) is made;
* a body never outgrows its `BodyHold`: a hold that must grow and cannot at
  once waits for bytes on the loop, growing holds before new ones.

It costs about two thirds of the thread fetcher's CPU per request (0.72
against 1.09 ms, benchmarks/fetch_cost.py; benchmarks/README.md, "Session
9"), and a request in flight is a socket, not a thread.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import resource
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from pipeline.media import download
from pipeline.media.body_budget import BodyHold
from pipeline.media.dns_cache import DnsTimeout
from pipeline.media.download import BlockedAddressError, DownloadParams
from pipeline.media import fetch_rules as rules
from pipeline.media.fetch_rules import FetchFailure, FetchResult, Reply
from pipeline.media.politeness import host_of

log = logging.getLogger(__name__)

# Lookups block in C (getaddrinfo): they run here, bounded by DnsCache's time limit, never on the loop.
_LOOKUPS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="async-dns")
_BUDGET_POLL = 0.005  # seconds between looks at a full body budget
_DECODED = ("gzip", "x-gzip", "deflate")  # encodings decoded (bounded) as urllib3 decodes them
_KEEPALIVE = 15.0  # seconds an idle connection is kept for the next request to its host
_MOST_OPEN_FILES = 1 << 16
_PINNED_HOSTS = 4096  # far more than the requests one worker has in flight (download.max_in_flight)


class _PinnedResolver(AbstractResolver):
    """Gives the connector the addresses this hop looked up and checked, never a second lookup's."""

    def __init__(self, pinned: dict[tuple[str, int], list[str]]):
        self._pinned = pinned

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        addresses = self._pinned.get((host.lower(), port))
        if not addresses:
            raise OSError(f"no checked addresses for {host}:{port}")
        return [ResolveResult(hostname=host, host=address, port=port,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for address in addresses]

    async def close(self) -> None:
        pass


class AsyncDownloader:
    """One per event loop: its session (connection pool) is made on the loop at the first fetch."""

    def __init__(self, params: DownloadParams, retry_throttled: bool = True,
                 may_retry: Callable[[str, str], bool] | None = None):
        """As `Downloader`: `retry_throttled=False` returns a 429/503 at once (the host scheduler pauses the
        host); `may_retry(host, reason)` may stop a retry (a host found down)."""
        self.params = params
        self._retry_throttled, self._may_retry = retry_throttled, may_retry
        self._dns = download.dns_cache(params)
        self._pinned: collections.OrderedDict[tuple[str, int], list[str]] = collections.OrderedDict()
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, url: str, expect_image: bool = True, hold: BodyHold | None = None) -> FetchResult:
        """Download `url`; never raises (see `Downloader.fetch`)."""
        end = time.monotonic() + self.params.deadline
        hop: list[str | None] = [None]  # the URL being requested, for the result
        try:
            try:
                async with asyncio.timeout(self.params.deadline):
                    return await self._fetch(url, expect_image, hold, end, hop)
            except TimeoutError:  # every other timeout became a FetchFailure: this is the deadline
                raise FetchFailure("timeout") from None
        except FetchFailure as failure:
            reason = rules.final_reason(failure, time.monotonic() >= end)
            return FetchResult(url, hop[0], None, reason, failure.status, failure.headers)
        except Exception:  # fetch must never take down a worker
            log.exception("unexpected error fetching %s", url)
            return FetchResult(url, hop[0], None, "unexpected_error", None, {})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self, url: str, expect_image: bool, hold: BodyHold | None, end: float,
                     hop: list[str | None]) -> FetchResult:
        hop[0] = rules.checked_url(url)
        for _ in range(self.params.max_redirects + 1):
            reply = await self._get_with_retries(hop[0], end, hold)
            if reply.body is None:
                hop[0] = rules.redirect_target(hop[0], reply)
                continue
            return rules.success_result(url, hop[0], reply, expect_image)
        raise FetchFailure("too_many_redirects")

    async def _get_with_retries(self, url: str, end: float, hold: BodyHold | None) -> Reply:
        params = self.params
        for attempt in range(params.retries + 1):
            try:
                return await self._get_once(url, end, hold)
            except FetchFailure as failure:
                delay = rules.retry_delay(failure, url, attempt, params.retries, params.backoff,
                                          end - time.monotonic(), self._retry_throttled)
                if delay is None:
                    raise
                if self._may_retry is not None and not self._may_retry(host_of(url), failure.reason):
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _get_once(self, url: str, end: float, hold: BodyHold | None) -> Reply:
        """One request for one hop: a redirect (body None) or a 2xx with its body."""
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise FetchFailure("timeout")
        host, port = rules.host_and_port(url)
        seconds = min(self.params.timeout, remaining)
        with rules.errors_as_reasons(_reason_for_error, before_body=True):
            addresses = await self._dns.resolve_on_loop(host, port, seconds, _LOOKUPS)
            if not self.params.allow_private_network:
                download.check_addresses(host, addresses)
            self._pin(host, port, addresses)
            response = await self._client().get(
                yarl.URL(url), allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds))
        try:
            reply = await self._reply(response, hold, end)
        except BaseException:
            response.close()  # its unread bytes must never reach the next request
            raise
        response.release()  # read to the end: the connection is kept for the next request
        return reply

    def _pin(self, host: str, port: int, addresses: list[str]) -> None:
        """The checked addresses the connector will get for (host, port): the most recent `_PINNED_HOSTS`
        hosts only, so a run over millions of hosts does not keep them all (a request connects right after
        its host is pinned, long before thousands of other hosts push it out)."""
        key = (host.lower(), port)
        self._pinned[key] = addresses
        self._pinned.move_to_end(key)
        if len(self._pinned) > _PINNED_HOSTS:
            self._pinned.popitem(last=False)

    async def _reply(self, response: aiohttp.ClientResponse, hold: BodyHold | None, end: float) -> Reply:
        headers = {name.lower(): value for name, value in response.headers.items()}
        if len(response.headers) != len(headers):  # repeated names are joined, as urllib3's itermerged does
            headers = _merged(response.headers)
        if rules.is_redirect(response.status, headers):
            return Reply(response.status, headers, None)
        if not 200 <= response.status <= 299:
            raise FetchFailure(f"http_{response.status}", response.status, headers)
        declared = rules.declared_length(headers, response.status, self.params.max_bytes)
        try:
            with rules.errors_as_reasons(_reason_for_error, before_body=False, status=response.status,
                                         headers=headers):
                body = await self._read_body(response, headers, declared, hold, end)
                body = await self._decoded(body, headers, response.status, hold, end)
        except BaseException:
            if hold is not None:
                hold.release()  # a retry or the next hop starts afresh
            raise
        return Reply(response.status, headers, body)

    async def _read_body(self, response: aiohttp.ClientResponse, headers: dict[str, str], declared: int | None,
                         hold: BodyHold | None, end: float) -> bytes:
        body = bytearray()
        max_bytes = self.params.max_bytes
        while True:
            size, grow_to = rules.next_read(len(body), declared, hold, max_bytes)
            if grow_to is not None and not await _grow(hold, grow_to, end):
                raise FetchFailure("body_budget_exhausted", response.status, headers)
            chunk = await response.content.read(size)
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > max_bytes:
                raise FetchFailure("too_large", response.status, headers)

    async def _decoded(self, body: bytes, headers: dict[str, str], status: int, hold: BodyHold | None,
                       end: float) -> bytes:
        """A gzip or deflate body decoded (we ask for identity; some servers send it anyway), no larger than
        `max_bytes` and held in the budget; other encodings are kept as they came."""
        if headers.get("content-encoding", "identity").lower() not in _DECODED or not body:
            return body
        try:
            decoded = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body, self.params.max_bytes + 1)
        except zlib.error:
            try:  # "deflate" as many servers send it: raw, without the zlib header
                decoded = zlib.decompressobj(-zlib.MAX_WBITS).decompress(body, self.params.max_bytes + 1)
            except zlib.error:
                raise FetchFailure("incomplete_read", status, headers) from None
        if len(decoded) > self.params.max_bytes:
            raise FetchFailure("too_large", status, headers)
        if hold is not None and len(decoded) > hold.bytes and not await _grow(hold, len(decoded), end):
            raise FetchFailure("body_budget_exhausted", status, headers)
        return decoded

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise_open_file_limit()
            connector = aiohttp.TCPConnector(
                keepalive_timeout=_KEEPALIVE,
                limit=0, limit_per_host=0,  # the host scheduler limits requests in flight, per host and in all
                use_dns_cache=False, resolver=_PinnedResolver(self._pinned),
                happy_eyeballs_delay=None,  # the addresses in order, as urllib3 tries them
                socket_factory=self._socket)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": self.params.user_agent, "Accept": "image/*,*/*;q=0.5",
                         "Accept-Encoding": "identity"})
        return self._session

    def _socket(self, addr_info) -> socket.socket:
        """The socket for one address the connector will connect to: refused unless public."""
        family, kind, proto, _, address = addr_info
        if not self.params.allow_private_network and not download.is_public_address(address[0]):
            raise BlockedAddressError(f"refusing to connect to non-public address {address[0]}")
        return socket.socket(family=family, type=kind, proto=proto)


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (at most 65,536); returns the limit.

    aiohttp keeps each idle connection for `_KEEPALIVE` seconds and bounds only the connections in use, so
    a worker fetching from hundreds of new hosts a second holds thousands of idle sockets, past the
    common soft limit of 1,024 (every later connection would fail as connection_error).  The thread
    fetcher's pool manager keeps at most a few hundred hosts' connections instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MOST_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, _MOST_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return wanted
    return soft


async def _grow(hold: BodyHold, nbytes: int, end: float) -> bool:
    """Grow `hold` to `nbytes`, waiting on the loop (never blocking it) until `end` for the bytes."""
    if hold.resize(nbytes, 0.0):
        return True
    with hold.waiting():
        # Gives up a little before the deadline, so the row fails as body_budget_exhausted, not as a timeout.
        while end - time.monotonic() > 2 * _BUDGET_POLL:
            await asyncio.sleep(_BUDGET_POLL)
            if hold.resize(nbytes, 0.0):
                return True
    return False


def _merged(headers) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name, value in headers.items():
        name = name.lower()
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


def _reason_for_error(exc: BaseException, before_body: bool) -> str | None:
    cause = exc.__cause__ if isinstance(exc, aiohttp.ClientConnectorError) else None
    if isinstance(exc, BlockedAddressError) or isinstance(cause, BlockedAddressError):
        return "blocked_address"
    if isinstance(exc, DnsTimeout):
        return "dns_timeout"
    if isinstance(exc, socket.gaierror):
        return "dns_error"
    if isinstance(exc, (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch)):
        return "tls_error"
    if isinstance(exc, TimeoutError):  # aiohttp's connect and read timeouts are TimeoutErrors too
        return "timeout"
    if isinstance(exc, (aiohttp.InvalidURL, ValueError, UnicodeError)):
        return "invalid_url"
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return "connection_error" if before_body else "incomplete_read"
    return None
