"""A wall-clock limit for one whole fetch, enforced at the socket.

Read timeouts bound each `recv`, not the fetch: a server that sends the
status line or a header one byte per second never trips them, and
http.client reads headers of up to 64 KiB a line.  So every socket a fetch
uses (new or reused from the pool) is registered with the fetch's
`FetchClock`, and one watchdog thread per process shuts those sockets down
when the deadline passes.  Whatever the fetch is blocked in (TLS handshake,
status line, headers, body) then returns at once with an error, which the
downloader reports as `timeout` because the clock says it expired.

DNS cannot be interrupted that way (getaddrinfo blocks in C), so
`run_within` runs a lookup on a helper thread and stops waiting for it, and
the addresses found are pinned on the clock for the connection to use.
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

_current = threading.local()
# Lookups are short; a resolver that hangs holds one of these, not a fetch.
_LOOKUPS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="dns")


class FetchClock:
    """The deadline of one fetch and the sockets it has used so far."""

    def __init__(self, deadline: float):
        self.deadline = deadline  # time.monotonic() value
        # (host, port) -> the addresses looked up (and checked) for it: connections
        # go to these, so urllib3 does not look the host up again, unbounded.
        self.addresses: dict[tuple[str, int], list[str]] = {}
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._expired = False
        self._finished = False

    @property
    def expired(self) -> bool:
        return self._expired or time.monotonic() >= self.deadline

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        """Cut `sock` when the deadline passes (at once if it already has)."""
        with self._lock:
            if self._expired:
                _cut(sock)
            elif not self._finished:
                self._sockets.append(sock)

    def expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._expired = True
            for sock in self._sockets:
                _cut(sock)
            self._sockets.clear()

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            self._sockets.clear()


def _cut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for an SSLSocket: it acts on the file
    # descriptor, so a read blocked in another thread returns at once.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # already closed or never connected
        pass


class _Watchdog:
    """One thread that expires clocks in deadline order."""

    def __init__(self):
        self._heap: list[tuple[float, int, FetchClock]] = []
        self._order = itertools.count()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, clock: FetchClock) -> None:
        with self._wakeup:
            heapq.heappush(self._heap, (clock.deadline, next(self._order), clock))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fetch-deadline", daemon=True)
                self._thread.start()
            self._wakeup.notify()

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._heap:
                    self._wakeup.wait()
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._wakeup.wait(wait)
                    continue
                (_, _, clock) = heapq.heappop(self._heap)
            clock.expire()


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def fetch_clock(seconds: float):
    """A FetchClock for the fetch running in this thread, expired by the watchdog after `seconds`."""
    clock = FetchClock(time.monotonic() + seconds)
    _WATCHDOG.add(clock)
    _current.clock = clock
    try:
        yield clock
    finally:
        _current.clock = None
        clock.finish()


def current_clock() -> FetchClock | None:
    return getattr(_current, "clock", None)


def watch_socket(sock: socket.socket | None) -> None:
    """Register `sock` with this thread's fetch, if any."""
    clock = current_clock()
    if clock is not None and sock is not None:
        clock.watch(sock)


def host_key(host: str, port: int) -> tuple[str, int]:
    return (host.strip("[]").rstrip(".").lower(), port)


def pin_addresses(host: str, port: int, addresses: list[str]) -> None:
    """Connections of this thread's fetch to host:port go to `addresses`."""
    clock = current_clock()
    if clock is not None:
        clock.addresses[host_key(host, port)] = addresses


def pinned_addresses(host: str, port: int) -> list[str]:
    clock = current_clock()
    return clock.addresses.get(host_key(host, port), []) if clock is not None else []


def run_within(seconds: float, function, *args):
    """`function(*args)`, or TimeoutError if it takes longer than `seconds` (it may go on in the background)."""
    future = _LOOKUPS.submit(function, *args)
    try:
        return future.result(timeout=max(seconds, 0.0))
    except FutureTimeout:
        raise TimeoutError(f"{getattr(function, '__name__', 'call')} took more than {seconds:.1f}s") from None


def fetch_expired() -> bool:
    clock = current_clock()
    return clock is not None and clock.expired
