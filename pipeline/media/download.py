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

import contextlib
import functools
import hashlib
import ipaddress
import logging
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
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

from pipeline.media.body_budget import UNDECLARED_START, BodyHold
from pipeline.media.dns_cache import DnsCache, DnsTimeout
from pipeline.media.fetch_clock import FetchClock, fetch_clock, pin_addresses
from pipeline.core.params import ParamError
from pipeline.media.politeness import THROTTLE_STATUSES, host_of
from pipeline.media.sniff import sniff_image_mime
from pipeline.media.watched_pool import watched_pool_classes

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 64 * 1024
_TRANSIENT_REASONS = frozenset({"timeout", "dns_timeout", "connection_error", "incomplete_read", "http_429"})


@dataclass(frozen=True)
class DownloadParams:
    timeout: float = 10.0  # seconds for connect and for each read
    retries: int = 2  # retries on transient errors only
    backoff: float = 0.5  # first retry waits about this long, then doubles
    max_redirects: int = 5  # redirects followed per fetch, each checked by the SSRF guard
    max_bytes: int = 20_000_000  # larger responses are rejected as too_large
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
        if self.body_budget_bytes < self.max_bytes:
            problems.append(f"body_budget_bytes ({self.body_budget_bytes}) must be >= max_bytes ({self.max_bytes}): "
                            "a body of max_bytes could never be held")
        if problems:
            raise ParamError(f"download: {'; '.join(problems)}")


@dataclass
class FetchResult:
    url: str  # as requested
    final_url: str | None  # the last URL requested (after redirects); None if none was
    data: bytes | None  # body on success
    reason: str | None  # None on success, else a short snake_case reason
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)  # final response, lower-cased names
    mime: str | None = None  # an image type sniffed from magic bytes, never from Content-Type

    @property
    def ok(self) -> bool:
        return self.reason is None

    @functools.cached_property
    def sha256(self) -> str | None:
        """Hex SHA-256 of the body, hashed once however many steps ask (the sample's, opt-out lists)."""
        return hashlib.sha256(self.data).hexdigest() if self.data is not None else None


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

class _Failure(Exception):
    """A fetch attempt failed with `reason`; carries the response status and headers if any."""

    def __init__(self, reason: str, status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers or {}

    @property
    def transient(self) -> bool:
        return self.reason in _TRANSIENT_REASONS or (self.status is not None and 500 <= self.status <= 599)


@dataclass
class _Reply:
    status: int
    headers: dict[str, str]
    body: bytes | None  # None for a redirect


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
        # `resolve` looked up at call time: tests stand in for DNS by replacing it.
        self._dns = DnsCache(params.dns_cache_ttl, params.dns_negative_ttl, lambda host, port: resolve(host, port))
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
                current = _checked_url(url)
                for _hop in range(self.params.max_redirects + 1):
                    reply = self._get_with_retries(current, clock, hold)
                    if reply.body is None:
                        current = _checked_url(urllib.parse.urljoin(current, reply.headers["location"]))
                        continue
                    return _success(url, current, reply, expect_image)
                raise _Failure("too_many_redirects")
            except _Failure as failure:
                # A socket cut by the clock fails as whatever it was doing: say why it was cut.
                cut = clock.expired and failure.reason not in ("blocked_address", "body_budget_exhausted")
                reason = "timeout" if cut else failure.reason
                return FetchResult(url, current, None, reason, failure.status, failure.headers)
            except Exception:  # fetch must never take down a worker
                log.exception("unexpected error fetching %s", url)
                return FetchResult(url, current, None, "unexpected_error", None, {})

    def close(self) -> None:
        self._pool.clear()

    def _get_with_retries(self, url: str, clock: FetchClock, hold: BodyHold | None) -> _Reply:
        for attempt in range(self.params.retries + 1):
            try:
                return self._get_once(url, clock, hold)
            except _Failure as failure:
                delay = _backoff_delay(self.params.backoff, url, attempt)
                out_of_time = delay >= clock.remaining()
                throttled = failure.status in THROTTLE_STATUSES and not self._retry_throttled
                if not failure.transient or throttled or attempt == self.params.retries or out_of_time:
                    raise
                if self._may_retry is not None and not self._may_retry(host_of(url), failure.reason):
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _get_once(self, url: str, clock: FetchClock, hold: BodyHold | None) -> _Reply:
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
            raise _Failure("timeout", reply.status, reply.headers)
        return reply

    def _request(self, url: str, clock: FetchClock):
        """Send the request and read the status line and headers."""
        remaining = clock.remaining()
        if remaining <= 0:
            raise _Failure("timeout")
        host, port = _host_and_port(url)
        seconds = min(self.params.timeout, remaining)
        with _errors_as_reasons(before_body=True):
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

    def _reply(self, response, clock: FetchClock, hold: BodyHold | None) -> _Reply:
        headers = {name.lower(): value for name, value in response.headers.itermerged()}
        if response.status in REDIRECT_STATUSES and "location" in headers:
            return _Reply(response.status, headers, None)
        if not 200 <= response.status <= 299:
            raise _Failure(f"http_{response.status}", response.status, headers)
        declared = self._declared_length(headers, response.status)
        try:
            with _errors_as_reasons(before_body=False, status=response.status, headers=headers):
                body = self._read_body(response, clock, headers, declared, hold)
        except _Failure:
            if hold is not None:
                hold.release()  # a retry or the next hop starts afresh
            raise
        return _Reply(response.status, headers, body)

    def _declared_length(self, headers: dict[str, str], status: int) -> int | None:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.params.max_bytes:
            raise _Failure("too_large", status, headers)
        return int(declared) if declared.isdigit() else None

    def _read_body(self, response, clock: FetchClock, headers: dict[str, str], declared: int | None,
                   hold: BodyHold | None) -> bytes:
        body = bytearray()
        if headers.get("content-encoding", "identity").lower() != "identity":
            declared = None  # urllib3 decodes it: its length is not the one declared
        out_of_budget = _Failure("body_budget_exhausted", response.status, headers)
        # read1 returns what has arrived, so the deadline is checked even when
        # a server drips bytes slower than the read timeout would notice.
        while chunk := response.read1(self._next_read(len(body), declared, hold, clock, out_of_budget)):
            body += chunk
            if len(body) > self.params.max_bytes:
                raise _Failure("too_large", response.status, headers)
            if clock.expired:
                raise _Failure("timeout", response.status, headers)
        return bytes(body)

    def _next_read(self, length: int, declared: int | None, hold: BodyHold | None, clock: FetchClock,
                   out_of_budget: _Failure) -> int:
        """How many bytes the next read may take: what the hold has room for, grown first if it is full
        (to the declared length, else by doubling)."""
        if hold is None:
            return _CHUNK_BYTES
        if declared is not None and length >= declared:
            # The read that ends the body (its connection is kept): http.client reads nothing past
            # Content-Length, so a longer body is cut there.
            return 1
        if length >= self.params.max_bytes:
            return 1  # the one byte that tells a body too large
        if length >= hold.bytes:
            wanted = declared if declared is not None else max(2 * hold.bytes, UNDECLARED_START)
            if not hold.resize(min(wanted, self.params.max_bytes), clock.remaining()):
                raise out_of_budget
        return min(_CHUNK_BYTES, hold.bytes - length)


def _success(url: str, final_url: str, reply: _Reply, expect_image: bool) -> FetchResult:
    mime = sniff_image_mime(reply.body)
    if expect_image and not reply.body:
        return FetchResult(url, final_url, None, "empty_body", reply.status, reply.headers)
    if expect_image and mime is None:
        return FetchResult(url, final_url, None, "not_an_image", reply.status, reply.headers)
    return FetchResult(url, final_url, reply.body, None, reply.status, reply.headers, mime)


def _checked_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL with a host; else _Failure(invalid_url)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except (ValueError, TypeError, AttributeError):
        raise _Failure("invalid_url") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise _Failure("invalid_url")
    if url_has_credentials(url):
        raise _Failure("url_has_credentials")
    return url


def without_credentials(url: str) -> str:
    """`url` with its userinfo (user names can be tokens too) replaced by `***`."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def url_has_credentials(url: str) -> bool:
    """True if `url` carries userinfo (`user:password@`), even an empty one."""
    try:
        return "@" in urllib.parse.urlsplit(url).netloc
    except (ValueError, TypeError, AttributeError):
        return False


def _host_and_port(url: str) -> tuple[str, int]:
    """The host and port exactly as urllib3 will connect to them."""
    try:
        parsed = urllib3.util.parse_url(url)
    except LocationParseError:
        raise _Failure("invalid_url") from None
    if not parsed.host:
        raise _Failure("invalid_url")
    return parsed.host.strip("[]"), parsed.port or (443 if parsed.scheme == "https" else 80)


def _backoff_delay(backoff: float, url: str, attempt: int) -> float:
    """Exponential backoff with jitter in [0.5, 1.5) derived from (url, attempt):
    spreads retries of different URLs apart, yet a re-run waits the same."""
    digest = hashlib.sha256(f"{url}#{attempt}".encode()).digest()
    jitter = 0.5 + int.from_bytes(digest[:4], "big") / 2**32
    return backoff * (2**attempt) * jitter


@contextlib.contextmanager
def _errors_as_reasons(before_body: bool, status: int | None = None, headers: dict[str, str] | None = None):
    """Turn socket/urllib3 errors into `_Failure(reason)`.

    The same error means different things before and during the body: a
    broken connection is a connection_error before the status line and an
    incomplete_read after it.
    """
    try:
        yield
    except _Failure:
        raise
    except Exception as exc:
        reason = _reason_for_error(exc, before_body)
        if reason is None:
            raise
        raise _Failure(reason, status, headers) from exc


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
