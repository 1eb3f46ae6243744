"""Per-host politeness inside one worker process: what a site owner would ask of a crawler.

`HostPolicy` answers, for each host, whether a request may start now, and
learns from what the host answered:

* at most `per_host_connections` requests in flight to one host;
* at most `per_host_rate` requests per second to one host (a token bucket
  with a burst of `per_host_burst`);
* `Retry-After` (seconds or an HTTP-date) on a 429 or 503 pauses the whole
  host, not just the URL, for that long (capped by `max_host_backoff`); a
  429/503 without it pauses the host with exponential backoff; either way the
  host's rate and connection cap are halved, and regained step by step with
  each success (additive increase, multiplicative decrease);
* a breaker: after `breaker_failures` consecutive connect failures or timeouts
  the host is "down" for `breaker_cooldown` seconds; rows for it are rejected
  fast (`host_unavailable`) instead of each waiting out a timeout; after the
  cool-down one probe request is let through, and a success closes the
  breaker again.

The policy never sleeps and never holds a thread: the download scheduler
(`pipeline.media.host_scheduler`) asks `wait_time(host)` and keeps rows for a host
that must wait in a queue while other hosts' rows use the threads.

Limits are per worker process; a cluster-wide limit is the per-host limit
times the number of workers (`download.workers_share_host_limits` divides
the budget by a worker count the user gives).
"""
from __future__ import annotations

import email.utils
import math
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

# Reasons whose repetition means "the host is not there", for the breaker.
UNREACHABLE_REASONS = frozenset({"timeout", "connection_error", "dns_error", "dns_timeout"})
# Statuses that ask the client to slow down.
THROTTLE_STATUSES = frozenset({429, 503})
REGAIN_RATE = 0.1  # requests per second regained per success after throttling
REGAIN_CONNECTIONS = 0.1  # connections regained per success


def host_of(url: str) -> str:
    """The origin's host, with its port when the URL names one ("example.com", "127.0.0.1:8080"):
    what the limits apply to."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return ""
    return f"{host}:{port}" if host and port else host


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date; None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None  # HTTP-dates are GMT; a date without a zone is not one
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved; not thread-safe (HostPolicy locks)."""

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst = rate, max(1.0, burst)
        self.tokens, self.updated = self.burst, now

    def _refill(self, now: float) -> None:
        if now > self.updated:  # `updated` may lie ahead: nothing refills during a host's pause
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0 if one is now)."""
        if math.isinf(self.rate):
            return 0.0
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        if not math.isinf(self.rate):
            self._refill(now)
            self.tokens -= 1.0


@dataclass(frozen=True)
class PolitenessParams:
    per_host_connections: int = 8
    per_host_rate: float = 20.0  # requests per second per host; 0 = unlimited
    per_host_burst: float = 10.0
    min_host_rate: float = 0.5  # requests per second: throttling never slows a host below this
    max_host_backoff: float = 60.0  # the longest pause a Retry-After may impose
    breaker_failures: int = 5  # consecutive unreachable results that mark a host down
    breaker_cooldown: float = 60.0


@dataclass
class _Host:
    bucket: TokenBucket
    connections: float  # the connection cap now: lowered by throttling answers, regained by successes
    in_flight: int = 0
    paused_until: float = 0.0
    throttle_streak: int = 0
    failure_streak: int = 0
    down_until: float = 0.0  # breaker open until then
    probing: bool = False  # half-open: one request is testing the host
    breaker_trips: int = 0


class HostDown(Exception):
    """The host's breaker is open: reject the row as host_unavailable."""


class HostPolicy:
    """Thread-safe per-host state of one worker process."""

    def __init__(self, params: PolitenessParams, clock: Callable[[], float] = time.monotonic):
        self.params, self._clock = params, clock
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()

    def _host(self, host: str, now: float) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            rate = self.params.per_host_rate or math.inf
            bucket = TokenBucket(rate, self.params.per_host_burst, now)
            state = self._hosts[host] = _Host(bucket, float(self.params.per_host_connections))
        return state

    def wait_time(self, host: str) -> float:
        """0 if a request to `host` may start now, else seconds to wait; raises HostDown."""
        with self._lock:
            now = self._clock()
            state = self._host(host, now)
            if state.down_until > now:
                raise HostDown(host)
            return self._wait(state, now)

    @staticmethod
    def _wait(state: _Host, now: float) -> float:
        """Seconds until a host whose breaker is not open may take a request (0: now)."""
        if state.down_until and state.probing:
            return 0.05  # half-open: wait for the probe's result
        if state.in_flight >= int(state.connections):
            return 0.01  # woken earlier by a finishing request
        return max(state.paused_until - now, state.bucket.wait_time(now), 0.0)

    def try_start(self, host: str) -> bool:
        """Claims a connection slot and a token if `wait_time(host)` is 0; False if not (now)."""
        with self._lock:
            now = self._clock()
            state = self._host(host, now)
            if state.down_until > now or self._wait(state, now) > 0:
                return False
            if state.down_until:
                state.probing = True  # the cool-down has passed: this request is the probe
            state.bucket.take(now)
            state.in_flight += 1
            return True

    def finish(self, host: str, reason: str | None, status: int | None, retry_after: str | None) -> None:
        """Records one finished request: its failure reason (None on success) and final status."""
        with self._lock:
            now = self._clock()
            state = self._host(host, now)
            state.in_flight = max(0, state.in_flight - 1)
            if status in THROTTLE_STATUSES:
                self._throttled(state, retry_after, now)
            else:
                state.throttle_streak = 0
            if reason in UNREACHABLE_REASONS:
                self._unreachable(state, now)
            else:
                self._reachable(state, reason)

    def _throttled(self, state: _Host, retry_after: str | None, now: float) -> None:
        """The host asked us to slow down: pause it, and halve its rate and connections (AIMD)."""
        state.throttle_streak += 1
        state.connections = max(1.0, min(state.connections, state.in_flight + 1) / 2)
        if math.isinf(state.bucket.rate):
            state.bucket.rate = float(self.params.per_host_connections)
        state.bucket.rate = max(self.params.min_host_rate, state.bucket.rate / 2)
        self._pause(state, retry_after, now)
        state.bucket.tokens = 0.0  # no burst when the pause ends
        state.bucket.updated = state.paused_until

    def _pause(self, state: _Host, retry_after: str | None, now: float) -> None:
        wait = parse_retry_after(retry_after)
        if wait is None:  # exponential: 0.5 s, 1 s, 2 s, ... while the host keeps throttling
            wait = 0.5 * 2 ** min(state.throttle_streak - 1, 8)
        state.paused_until = max(state.paused_until, now + min(wait, self.params.max_host_backoff))

    def _unreachable(self, state: _Host, now: float) -> None:
        state.failure_streak += 1
        if state.probing or (state.failure_streak >= self.params.breaker_failures and state.down_until <= now):
            if not state.probing:
                state.breaker_trips += 1
            state.down_until = now + self.params.breaker_cooldown
            state.probing = False

    def _reachable(self, state: _Host, reason: str | None) -> None:
        state.failure_streak = 0
        if state.down_until:  # the probe got an answer: the host is back
            state.down_until, state.probing = 0.0, False
        if reason is None:
            self._regain(state)

    def _regain(self, state: _Host) -> None:
        """Additive increase after a success, back up to the configured limits."""
        limit = self.params.per_host_rate or math.inf
        if state.bucket.rate < limit:
            state.bucket.rate = min(limit, state.bucket.rate + REGAIN_RATE)
        state.connections = min(float(self.params.per_host_connections), state.connections + REGAIN_CONNECTIONS)

    def may_retry(self, host: str, reason: str) -> bool:
        """A failed attempt that would be retried in its thread: it counts toward the breaker, and
        no retry once the host is down (so a dead host costs about `breaker_failures` timeouts)."""
        with self._lock:
            now = self._clock()
            state = self._host(host, now)
            if reason in UNREACHABLE_REASONS:
                self._unreachable(state, now)
            return state.down_until <= now

    def release(self, host: str) -> None:
        """A started row that sent no request (a stage rejected it first): its slot only is given back."""
        with self._lock:
            state = self._host(host, self._clock())
            state.in_flight = max(0, state.in_flight - 1)

    def paused_for(self, host: str) -> float:
        """Seconds `host` is paused for by a throttling answer (0 if not)."""
        with self._lock:
            now = self._clock()
            return max(0.0, self._host(host, now).paused_until - now)

    def breaker_trips(self, host: str) -> int:
        """How often `host`'s breaker has opened (a failed probe reopening it is not a new trip)."""
        with self._lock:
            return self._host(host, self._clock()).breaker_trips


TOP_HOSTS = 50  # hosts listed by name in the audit; the rest are summed


def merge_host_tallies(tallies) -> dict[str, dict[str, float]]:
    """Per-host counters of many bundles, summed (a Beam combine)."""
    total: dict[str, dict[str, float]] = {}
    for tally in tallies:
        for host, counts in tally.items():
            mine = total.setdefault(host, {})
            for name, value in counts.items():
                mine[name] = mine.get(name, 0) + value
    return total


def host_report(tally: dict[str, dict[str, float]]) -> dict:
    """The audit's per-host table: the hosts with the most rows, and how each behaved."""
    ranked = sorted(tally.items(), key=lambda item: (-item[1].get("rows", 0), item[0]))
    rows = []
    for host, counts in ranked[:TOP_HOSTS]:
        requests = counts.get("requests", 0)
        rows.append({
            "host": host,
            "rows": int(counts.get("rows", 0)),
            "downloaded": int(counts.get("downloaded", 0)),  # fetched, decoded and resized (later stages may drop it)
            "success_rate": round(counts.get("downloaded", 0) / counts["rows"], 4) if counts.get("rows") else None,
            "throttled_answers": int(counts.get("throttled", 0)),
            "host_unavailable": int(counts.get("host_unavailable", 0)),
            "mean_latency_s": round(counts.get("seconds", 0) / requests, 3) if requests else None,
        })
    return {"hosts": len(tally), "top": rows,
            "throttled_answers": int(sum(c.get("throttled", 0) for c in tally.values())),
            "host_unavailable": int(sum(c.get("host_unavailable", 0) for c in tally.values()))}
