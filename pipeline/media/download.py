"""Fetch images (and small documents) over HTTP(S): bounded, retried, and guarded against SSRF.

`Downloader.fetch(url)` never raises: every failure becomes a `FetchResult`
with a short snake_case `reason`.  `fetch(url, expect_image=False)` fetches any
other resource (robots.txt, tdmrep.json) with the same guard, limits, retries
and user agent, minus the two image checks: any 2xx body, even an empty one,
is a success.  Reasons:

  invalid_url          not http/https, no host, unparsable (also a bad redirect Location)
  url_has_credentials  the URL (or a redirect Location) carries user:password@, which
                       would otherwise be sent and kept in the shards; never fetched
  blocked_address      the host resolves to, or the socket reached, a non-public address
  dns_error            the host name does not resolve
  dns_timeout          the lookup took longer than the time left, or the resolver said "try again"
  tls_error            TLS handshake or certificate failure
  http_<status>        a non-2xx final status, e.g. http_404 (http_503 after retries)
  timeout              connect/read timeout, or the whole fetch exceeded `deadline`
                       (DNS, connect, TLS, status line, headers, every hop, body and
                       retries together: see pipeline.media.fetch_clock)
  connection_error     refused, reset, or cut before the response started
  too_many_redirects   more than `max_redirects` hops
  too_large            Content-Length or the streamed body exceeds `max_bytes`
  body_budget_exhausted  the worker's `body_budget_bytes` stayed taken by other bodies
                       until the deadline (pipeline.media.body_budget)
  incomplete_read      body shorter than Content-Length, or the connection was cut mid-body
  empty_body           2xx with no bytes (images only)
  not_an_image         the magic bytes are not an image format; Content-Type is ignored (images only)
  unexpected_error     a bug in this module; logged with its traceback

Retries (with deterministic exponential backoff) happen only for transient
failures: timeout, connection_error, incomplete_read, http_429 and http_5xx.

SSRF guard (unless `allow_private_network`): before each hop every address the
host resolves to must be public; the connection goes to exactly those checked
addresses (no second lookup that a rebinding DNS answer could change), and the
connection classes still check the peer of the connected socket before a byte
is sent.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Callable

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from pipeline.core.params import ParamError
from pipeline.media.body_budget import BodyHold
from pipeline.media.dns_cache import DnsCache, DnsTimeout
from pipeline.media.fetch_clock import FetchClock, fetch_clock, pin_addresses
from pipeline.media.fetch_rules import (  # noqa: F401 -- FetchResult, sniff_image_mime and the URL helpers are this module's API too
    FetchFailure,
    FetchResult,
    Reply,
    checked_url,
    declared_length,
    errors_as_reasons,
    final_reason,
    host_and_port,
    is_redirect,
    next_read,
    redirect_target,
    retry_delay,
    sniff_image_mime,
    success_result,
    url_has_credentials,
    without_credentials,
)
from pipeline.media.politeness import host_of
from pipeline.media.watched_pool import watched_pool_classes

log = logging.getLogger(__name__)



FETCHERS = ("auto", "async", "threads")


@dataclass(frozen=True)
class DownloadParams:
    timeout: float = 10.0  # seconds for connect and for each read
    retries: int = 2  # retries on transient errors only
    backoff: float = 0.5  # first retry waits about this long, then doubles
    max_redirects: int = 5  # redirects followed per fetch, each checked by the SSRF guard
    max_bytes: int = 20_000_000  # larger responses are rejected as too_large
    # How requests are sent: "async" (aiohttp on one event loop per worker: a request in flight is a socket,
    # not a thread; pipeline.media.async_download), "threads" (urllib3, a thread per request in flight), or
    # "auto": threads when the rows run in the launcher's process (a small input), else async (`chosen_fetcher`).
    # Both give the same results and keep the same guards and limits; async costs less CPU per row
    # (benchmarks/README.md, "Session 9").
    fetcher: str = "auto"
    threads: int = 32  # requests in flight per worker process at the start (and the least it lowers to)
    # The in-flight limit grows from `threads` while rows wait for a slot and the worker uses under 0.9 cores
    # (pipeline.media.host_scheduler.InFlightLimit), so network latency is not the bottleneck, up to this cap.
    # max_in_flight <= threads: a fixed limit of `threads`.
    # 400: at 1 s a worker needs ~300 in flight to keep its core busy.  Request threads only fetch (bodies
    # are decoded on a few threads of their own), so a high cap no longer thrashes the CPU as it did when
    # every request thread decoded too (512 then: 155 rows/s at 0 ms against 237).
    max_in_flight: int = 400
    # Bytes of response bodies a worker may hold at once: each body reserves its declared length
    # (pipeline.media.body_budget); a request whose body cannot be had waits, up to `deadline`.
    body_budget_bytes: int = 4 << 30
    user_agent: str = "curate/0.1 (image-text dataset curation; +https://github.com/curate-dev/curate)"  # sent with every request
    allow_private_network: bool = False  # allow loopback/private/link-local hosts (SSRF guard off)
    # Wall-clock limit for one fetch (all hops, retries and the body), so a
    # server that drips a byte per read timeout cannot hold a thread for hours.
    deadline: float = 60.0
    # Rows downloaded (and checkpointed) as one unit of work: smaller units
    # spread a shard over more workers, larger ones mean fewer files.
    rows_per_task: int = 1000
    # Politeness per host, per worker process (pipeline.media.politeness): a site sees at most
    # workers x these, or these overall with workers_per_host_budget set to the worker count.
    per_host_connections: int = 8  # requests in flight to one host
    per_host_rate: float = 20.0  # requests per second to one host (token bucket); 0: no limit
    per_host_burst: float = 10.0  # requests a host may get at once after a quiet spell
    workers_per_host_budget: int = 1  # divide the per-host limits by this many workers (cluster-wide limits)
    throttle_retries: int = 3  # a row answered 429/503 is queued again this often (its host paused as told)
    max_host_backoff: float = 60.0  # the longest pause a host's Retry-After may impose, in seconds
    breaker_failures: int = 5  # consecutive timeouts/connection failures that mark a host down
    breaker_cooldown: float = 60.0  # seconds a down host's rows are rejected fast (host_unavailable)
    dns_cache_ttl: float = 300.0  # seconds a host's addresses are reused (the SSRF check still runs each time)
    dns_negative_ttl: float = 30.0  # seconds a failed lookup is remembered

    def chosen_fetcher(self, in_process: bool) -> str:
        """The fetcher a run uses: `fetcher`, with "auto" resolved.  Rows run in the launcher's own process
        (a small input) take the thread fetcher: importing aiohttp there (~0.3 s, and ~0.4 s of a 10-row
        run) costs more than the event loop saves on a thousand rows (~0.5 ms a row)."""
        if self.fetcher != "auto":
            return self.fetcher
        return "threads" if in_process else "async"

    def politeness(self):
        """The per-host limits of one worker process."""
        from pipeline.media.politeness import PolitenessParams

        share = self.workers_per_host_budget
        return PolitenessParams(
            per_host_connections=max(1, self.per_host_connections // share),
            per_host_rate=self.per_host_rate / share,
            per_host_burst=max(1.0, self.per_host_burst / share),
            max_host_backoff=self.max_host_backoff,
            breaker_failures=self.breaker_failures,
            breaker_cooldown=self.breaker_cooldown,
        )

    def __post_init__(self):
        positive = {"timeout": self.timeout, "max_bytes": self.max_bytes, "threads": self.threads,
                    "max_in_flight": self.max_in_flight, "body_budget_bytes": self.body_budget_bytes,
                    "deadline": self.deadline, "rows_per_task": self.rows_per_task,
                    "per_host_connections": self.per_host_connections, "per_host_burst": self.per_host_burst,
                    "workers_per_host_budget": self.workers_per_host_budget,
                    "breaker_failures": self.breaker_failures}
        not_negative = {"retries": self.retries, "backoff": self.backoff, "max_redirects": self.max_redirects,
                        "per_host_rate": self.per_host_rate, "throttle_retries": self.throttle_retries,
                        "max_host_backoff": self.max_host_backoff, "breaker_cooldown": self.breaker_cooldown,
                        "dns_cache_ttl": self.dns_cache_ttl, "dns_negative_ttl": self.dns_negative_ttl}
        problems = [f"{name} must be > 0, got {value}" for name, value in positive.items() if value <= 0]
        problems += [f"{name} must be >= 0, got {value}" for name, value in not_negative.items() if value < 0]
        if self.fetcher not in FETCHERS:
            problems.append(f"fetcher must be one of {', '.join(FETCHERS)}, got {self.fetcher!r}")
        if self.body_budget_bytes < self.max_bytes:
            problems.append(f"body_budget_bytes ({self.body_budget_bytes}) must be >= max_bytes ({self.max_bytes}): "
                            "a body of max_bytes could never be held")
        if problems:
            raise ParamError(f"download: {'; '.join(problems)}")


# --- address policy ------------------------------------------------------------

class BlockedAddressError(Exception):
    """A host or peer address is not public.  Deliberately not an OSError, so
    urllib3 lets it through unwrapped instead of turning it into a retryable error."""


def is_public_address(address: str) -> bool:
    """True if `address` (an IP literal) is a globally routable unicast address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return _is_public_ip(_embedded_ipv4(ip) or ip)


def _is_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # is_global alone lets multicast through, so every category is named.
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified
    )


_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]  # the client address
    if ip in _NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (raises socket.gaierror if none)."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def dns_cache(params: DownloadParams) -> DnsCache:
    """A fetcher's DNS cache, as `params` say.  `resolve` is looked up at call time: tests stand in for DNS
    by replacing it."""
    return DnsCache(params.dns_cache_ttl, params.dns_negative_ttl, lambda host, port: resolve(host, port))


def check_addresses(host: str, addresses: list[str]) -> None:
    """Raise BlockedAddressError unless ALL the addresses `host` resolved to are public."""
    blocked = sorted({address for address in addresses if not is_public_address(address)})
    if blocked:
        raise BlockedAddressError(f"{host} resolves to non-public {', '.join(blocked)}")


def check_peer(sock: socket.socket) -> None:
    """Raise BlockedAddressError if the connected socket's peer is not public."""
    peer = sock.getpeername()[0]
    if not is_public_address(peer):
        raise BlockedAddressError(f"connected to non-public address {peer}")


# --- fetching --------------------------------------------------------------------

class Downloader:
    """Thread-safe: one instance (one connection pool) serves a whole thread pool."""

    def __init__(self, params: DownloadParams, retry_throttled: bool = True,
                 may_retry: Callable[[str, str], bool] | None = None):
        """`retry_throttled=False`: a 429/503 is returned at once, for a scheduler that pauses the
        whole host as its Retry-After says (pipeline.media.host_scheduler) instead of sleeping in this thread.
        `may_retry(host, reason)` hears of each failed attempt that would be retried, and may stop it
        (a host found down by the politeness breaker is not tried again)."""
        self.params = params
        self._retry_throttled = retry_throttled
        self._may_retry = may_retry
        self._dns = dns_cache(params)
        self._pool = urllib3.PoolManager(
            num_pools=max(100, params.threads),
            maxsize=params.threads,
            block=False,
            retries=False,
            headers={"User-Agent": params.user_agent, "Accept": "image/*,*/*;q=0.5"},
        )
        self._pool.pool_classes_by_scheme = watched_pool_classes(None if params.allow_private_network else check_peer)

    def fetch(self, url: str, expect_image: bool = True, hold: BodyHold | None = None) -> FetchResult:
        """Download `url`; never raises.  With `expect_image=False` any 2xx body
        (even an empty one) is a success, e.g. for robots.txt.  With a `hold` (pipeline.media.body_budget)
        the body is read only as far as the hold could be grown; the caller releases it when it is
        done with the body."""
        current: str | None = None
        with fetch_clock(self.params.deadline) as clock:
            try:
                current = checked_url(url)
                for _hop in range(self.params.max_redirects + 1):
                    reply = self._get_with_retries(current, clock, hold)
                    if reply.body is None:
                        current = redirect_target(current, reply)
                        continue
                    return success_result(url, current, reply, expect_image)
                raise FetchFailure("too_many_redirects")
            except FetchFailure as failure:
                reason = final_reason(failure, clock.expired)
                return FetchResult(url, current, None, reason, failure.status, failure.headers)
            except Exception:  # fetch must never take down a worker
                log.exception("unexpected error fetching %s", url)
                return FetchResult(url, current, None, "unexpected_error", None, {})

    def close(self) -> None:
        self._pool.clear()

    def _get_with_retries(self, url: str, clock: FetchClock, hold: BodyHold | None) -> Reply:
        params = self.params
        for attempt in range(params.retries + 1):
            try:
                return self._get_once(url, clock, hold)
            except FetchFailure as failure:
                delay = retry_delay(failure, url, attempt, params.retries, params.backoff, clock.remaining(),
                                    self._retry_throttled)
                if delay is None:
                    raise
                if self._may_retry is not None and not self._may_retry(host_of(url), failure.reason):
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _get_once(self, url: str, clock: FetchClock, hold: BodyHold | None) -> Reply:
        """One request for one hop: a redirect (body None) or a 2xx with its body."""
        response = self._request(url, clock)
        try:
            reply = self._reply(response, clock, hold)
        finally:
            # A response read to the end keeps its connection for reuse; any other
            # is closed, so its unread bytes never reach the next request.
            if not response.isclosed():
                response.close()
            response.release_conn()
        if clock.expired:  # the clock cut the socket: what was read looks complete but is not
            raise FetchFailure("timeout", reply.status, reply.headers)
        return reply

    def _request(self, url: str, clock: FetchClock):
        """Send the request and read the status line and headers."""
        remaining = clock.remaining()
        if remaining <= 0:
            raise FetchFailure("timeout")
        host, port = host_and_port(url)
        seconds = min(self.params.timeout, remaining)
        with errors_as_reasons(_reason_for_error, before_body=True):
            # The one lookup, bounded; the connection goes to exactly these addresses.
            addresses = self._dns.resolve(host, port, seconds)
            if not self.params.allow_private_network:
                check_addresses(host, addresses)
            pin_addresses(host, port, addresses)
            return self._pool.request(
                "GET",
                url,
                redirect=False,
                preload_content=False,
                timeout=urllib3.Timeout(connect=seconds, read=seconds),
            )

    def _reply(self, response, clock: FetchClock, hold: BodyHold | None) -> Reply:
        headers = {name.lower(): value for name, value in response.headers.itermerged()}
        if is_redirect(response.status, headers):
            return Reply(response.status, headers, None)
        if not 200 <= response.status <= 299:
            raise FetchFailure(f"http_{response.status}", response.status, headers)
        declared = declared_length(headers, response.status, self.params.max_bytes)
        try:
            with errors_as_reasons(_reason_for_error, before_body=False, status=response.status, headers=headers):
                body = self._read_body(response, clock, headers, declared, hold)
        except FetchFailure:
            if hold is not None:
                hold.release()  # a retry or the next hop starts afresh
            raise
        return Reply(response.status, headers, body)

    def _read_body(self, response, clock: FetchClock, headers: dict[str, str], declared: int | None,
                   hold: BodyHold | None) -> bytes:
        body = bytearray()
        max_bytes = self.params.max_bytes
        while True:
            size, grow_to = next_read(len(body), declared, hold, max_bytes)
            if grow_to is not None and not hold.resize(grow_to, clock.remaining()):
                raise FetchFailure("body_budget_exhausted", response.status, headers)
            # read1 returns what has arrived, so the deadline is checked even when
            # a server drips bytes slower than the read timeout would notice.
            chunk = response.read1(size)
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > max_bytes:
                raise FetchFailure("too_large", response.status, headers)
            if clock.expired:
                raise FetchFailure("timeout", response.status, headers)


def _reason_for_error(exc: BaseException, before_body: bool) -> str | None:
    if isinstance(exc, BlockedAddressError):
        return "blocked_address"
    if isinstance(exc, DnsTimeout):
        return "dns_timeout"
    if isinstance(exc, (socket.gaierror, NameResolutionError)):
        return "dns_error"
    if isinstance(exc, NewConnectionError):  # before timeouts: it subclasses ConnectTimeoutError
        return "connection_error"
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, SSLError):
        return "tls_error"
    if isinstance(exc, (LocationParseError, UnicodeError)):  # UnicodeError: host fails IDNA encoding
        return "invalid_url"
    if isinstance(exc, (ProtocolError, HTTPError, OSError)):
        return "connection_error" if before_body else "incomplete_read"
    return None
