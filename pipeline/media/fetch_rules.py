"""What a fetch decides, whatever carries its bytes: URLs, redirects, retries, body limits and results.

Both fetchers share these rules, so they fail with the same reasons and
retry, redirect and reserve memory the same way: the thread fetcher
(pipeline.media.download: urllib3, one thread per request) and the event-loop
fetcher (pipeline.media.async_download: aiohttp, thousands of requests on
one thread).  Only the transport and its errors differ.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

import urllib3
from urllib3.exceptions import LocationParseError

from pipeline.media.body_budget import UNDECLARED_START, BodyHold
from pipeline.media.politeness import THROTTLE_STATUSES
from pipeline.media.sniff import sniff_image_mime

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
TRANSIENT_REASONS = frozenset({"timeout", "dns_timeout", "connection_error", "incomplete_read", "http_429"})


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


class FetchFailure(Exception):
    """A fetch attempt failed with `reason`; carries the response status and headers if any."""

    def __init__(self, reason: str, status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers or {}

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT_REASONS or (self.status is not None and 500 <= self.status <= 599)


@dataclass
class Reply:
    """One hop's answer: a redirect (body None) or a 2xx with its body."""

    status: int
    headers: dict[str, str]
    body: bytes | None


def checked_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL with a host; else FetchFailure(invalid_url)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except (ValueError, TypeError, AttributeError):
        raise FetchFailure("invalid_url") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise FetchFailure("invalid_url")
    if url_has_credentials(url):
        raise FetchFailure("url_has_credentials")
    return url


def redirect_target(current: str, reply: Reply) -> str:
    """The checked URL a redirect `reply` to a request for `current` points at."""
    return checked_url(urllib.parse.urljoin(current, reply.headers["location"]))


def is_redirect(status: int, headers: dict[str, str]) -> bool:
    return status in REDIRECT_STATUSES and "location" in headers


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


def host_and_port(url: str) -> tuple[str, int]:
    """The host and port exactly as the connection will go to them."""
    try:
        parsed = urllib3.util.parse_url(url)
    except LocationParseError:
        raise FetchFailure("invalid_url") from None
    if not parsed.host:
        raise FetchFailure("invalid_url")
    return parsed.host.strip("[]"), parsed.port or (443 if parsed.scheme == "https" else 80)


def backoff_delay(backoff: float, url: str, attempt: int) -> float:
    """Exponential backoff with jitter in [0.5, 1.5) derived from (url, attempt):
    spreads retries of different URLs apart, yet a re-run waits the same."""
    digest = hashlib.sha256(f"{url}#{attempt}".encode()).digest()
    jitter = 0.5 + int.from_bytes(digest[:4], "big") / 2**32
    return backoff * (2**attempt) * jitter


def retry_delay(failure: FetchFailure, url: str, attempt: int, retries: int, backoff: float, remaining: float,
                retry_throttled: bool) -> float | None:
    """Seconds to wait before attempt `attempt + 1` after `failure`, or None if it is not retried: only
    transient failures are, while attempts and time are left (a throttled answer only with
    `retry_throttled`: else the host scheduler pauses the whole host instead)."""
    delay = backoff_delay(backoff, url, attempt)
    throttled = failure.status in THROTTLE_STATUSES and not retry_throttled
    if not failure.transient or throttled or attempt == retries or delay >= remaining:
        return None
    return delay


def final_reason(failure: FetchFailure, clock_expired: bool) -> str:
    """A socket cut by the deadline fails as whatever it was doing: say why it was cut."""
    if clock_expired and failure.reason not in ("blocked_address", "body_budget_exhausted"):
        return "timeout"
    return failure.reason


def declared_length(headers: dict[str, str], status: int, max_bytes: int) -> int | None:
    """The body's Content-Length, or None if it has none (or is decoded, so its length is not that one);
    FetchFailure(too_large) if it declares more than `max_bytes`."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchFailure("too_large", status, headers)
    if headers.get("content-encoding", "identity").lower() != "identity":
        return None
    return int(declared) if declared.isdigit() else None


def next_read(length: int, declared: int | None, hold: BodyHold | None, max_bytes: int) -> tuple[int, int | None]:
    """(bytes the next read may take, the size the hold must first grow to or None).

    With a hold, the body is never read past its reservation: when it is
    full it grows first, to the declared length, else by doubling."""
    if hold is None:
        return CHUNK_BYTES, None
    if declared is not None and length >= declared:
        # The read that ends the body (its connection is kept): the HTTP parser reads nothing past
        # Content-Length, so a longer body is cut there.
        return 1, None
    if length >= max_bytes:
        return 1, None  # the one byte that tells a body too large
    if length >= hold.bytes:
        wanted = min(declared if declared is not None else max(2 * hold.bytes, UNDECLARED_START), max_bytes)
        return min(CHUNK_BYTES, wanted - length), wanted
    return min(CHUNK_BYTES, hold.bytes - length), None


def success_result(url: str, final_url: str, reply: Reply, expect_image: bool) -> FetchResult:
    """The fetch's result for a 2xx `reply`: checked to be an image unless `expect_image` is False."""
    mime = sniff_image_mime(reply.body)
    if expect_image and not reply.body:
        return FetchResult(url, final_url, None, "empty_body", reply.status, reply.headers)
    if expect_image and mime is None:
        return FetchResult(url, final_url, None, "not_an_image", reply.status, reply.headers)
    return FetchResult(url, final_url, reply.body, None, reply.status, reply.headers, mime)


@contextlib.contextmanager
def errors_as_reasons(reason_for_error: Callable[[BaseException, bool], str | None], before_body: bool,
                      status: int | None = None, headers: dict[str, str] | None = None):
    """A transport's errors as `FetchFailure(reason)`, by the fetcher's `reason_for_error(error, before_body)`
    (None: not a fetch failure, raised as it is).

    The same error means different things before and during the body: a
    broken connection is a connection_error before the status line and an
    incomplete_read after it.
    """
    try:
        yield
    except FetchFailure:
        raise
    except Exception as exc:
        reason = reason_for_error(exc, before_body)
        if reason is None:
            raise
        raise FetchFailure(reason, status, headers) from exc
