"""A per-process DNS cache: one lookup per host per `ttl`, failures remembered for `negative_ttl`.

Without it every fetch asks the resolver again, and a run of millions of rows
over a few thousand hosts hammers it (img2dataset's users lose most rows to
resolver failures without a local caching resolver).  `getaddrinfo` gives no
TTL, so the cache keeps an answer for a fixed `ttl` (default 300 s).

The cache only saves lookups: the SSRF guard still checks the addresses on
every hop and the connected peer on every connection (pipeline.media.download).

A lookup that takes longer than its time budget is `dns_timeout`, and so is
the resolver's "try again" (EAI_AGAIN); a name that does not exist is
`dns_error`.  Only `dns_error` answers are cached as negative: a timeout says
nothing about the name.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import Executor
from typing import Callable, NoReturn

from pipeline.media.fetch_clock import run_within


class DnsTimeout(TimeoutError):
    """The lookup did not finish in time, or the resolver asked to try again."""


class DnsCache:
    """Thread-safe; `resolve(host, port, seconds)` -> addresses, or raises socket.gaierror / DnsTimeout.

    `lookup(host, port)` does the real lookup (pipeline.media.download.resolve: getaddrinfo)."""

    def __init__(self, ttl: float, negative_ttl: float, lookup: Callable[[str, int], list[str]],
                 clock: Callable[[], float] = time.monotonic, max_hosts: int = 100_000):
        """At most `max_hosts` answers are kept (the oldest stored go first): a run over millions of hosts
        would otherwise keep one per host it ever saw (~300 bytes each)."""
        self._ttl, self._negative_ttl, self._lookup, self._clock = ttl, negative_ttl, lookup, clock
        self._max_hosts = max_hosts
        self._answers: dict[tuple[str, int], tuple[float, list[str] | socket.gaierror]] = {}
        self._lock = threading.Lock()

    def resolve(self, host: str, port: int, seconds: float) -> list[str]:
        cached = self.cached(host, port)
        return cached if cached is not None else self._look_up((host.lower(), port), host, port, seconds)

    def cached(self, host: str, port: int) -> list[str] | None:
        """The addresses still known for `host` (raises its remembered failure), or None: a lookup is due.
        Never blocks, so an event loop may ask before it sends a lookup to a thread."""
        with self._lock:
            cached = self._answers.get((host.lower(), port))
        if cached is None or cached[0] <= self._clock():
            return None
        if isinstance(cached[1], socket.gaierror):
            raise cached[1]
        return list(cached[1])

    async def resolve_on_loop(self, host: str, port: int, seconds: float, lookups: Executor) -> list[str]:
        """`resolve` for an event loop: a cache miss is looked up on a thread of `lookups`, and the loop
        stops waiting for it after `seconds` (one hand-off: `resolve` would hand it to a second thread).
        On the real web most rows are a host not seen before, so this runs for most of them."""
        cached = self.cached(host, port)
        if cached is not None:
            return cached
        key = (host.lower(), port)
        lookup = asyncio.get_running_loop().run_in_executor(lookups, self._lookup, host, port)
        try:
            addresses = await asyncio.wait_for(lookup, max(seconds, 0.0))
        except (TimeoutError, socket.gaierror) as err:
            self._fail(key, host, seconds, err)
        return self._stored(key, addresses)

    def _look_up(self, key, host: str, port: int, seconds: float) -> list[str]:
        try:
            addresses = run_within(seconds, self._lookup, host, port)
        except (TimeoutError, socket.gaierror) as err:
            self._fail(key, host, seconds, err)
        return self._stored(key, addresses)

    def _stored(self, key, addresses: list[str]) -> list[str]:
        self._store(key, addresses, self._ttl)
        return list(addresses)

    def _fail(self, key, host: str, seconds: float, err: BaseException) -> NoReturn:
        """Raises what a failed lookup means: DnsTimeout (not cached: it says nothing about the name), or
        the resolver's error, remembered for `negative_ttl`."""
        if not isinstance(err, socket.gaierror):
            raise DnsTimeout(f"looking up {host} took more than {seconds:.1f}s") from None
        if err.errno == socket.EAI_AGAIN:
            raise DnsTimeout(f"the resolver asked to try {host} again") from err
        self._store(key, err, self._negative_ttl)
        raise err

    def _store(self, key, answer, ttl: float) -> None:
        if ttl > 0:
            with self._lock:
                self._answers.pop(key, None)  # re-stored at the end: the oldest answers are first
                self._answers[key] = (self._clock() + ttl, answer)
                if len(self._answers) > self._max_hosts:
                    del self._answers[next(iter(self._answers))]
