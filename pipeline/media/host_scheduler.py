"""Runs one download task's rows on a thread pool, host by host, as `HostPolicy` allows.

Rows wait in per-host queues, not in threads: a thread is given to a row only
when its host has a free connection slot, a rate token, no pause from a
throttling answer and no open breaker.  Hosts are served round-robin, so a
task whose rows are mostly one slow or throttling host still keeps the
other hosts' rows moving.

A row answered 429/503 goes back to its host's queue (the host is paused as
its Retry-After says) until `throttle_retries` is spent (then its reason is
the final `http_429`/`http_503`) or waiting longer would pass the row's
deadline (`host_backoff_exceeded`).  Rows of a host whose breaker is open
are rejected at once with `host_unavailable`.

How many requests are in flight at once follows `InFlightLimit`: it grows
while rows wait for a slot but not for the CPU, so a far-away web (100 ms to
1 s per request) is met with more requests in flight, not idle CPUs.

A fetch may return the rest of its row's work (decode, resize: CPU) as a
function instead of a result.  That runs on a small pool of its own, in the
order the responses came, while the request's thread and slot go to the next
row.  Requests and bodies waiting for the CPU together stay under the limit
plus `max_processing`, so when the CPU is the bottleneck a request goes out
as a body is done with, not in bursts.  (With the decode in the request's
thread, hundreds of threads decoded at once, all finished together, and the
requests went out in waves: at 1 s latency ~400 in one second, next to none
in the next.)
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Executor, Future
from queue import Empty, SimpleQueue
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from pipeline.media.politeness import THROTTLE_STATUSES, HostDown, HostPolicy, PolitenessParams, host_of
from pipeline.core.records import Reject, Sample

_THROTTLED_REASONS = frozenset(f"http_{status}" for status in THROTTLE_STATUSES)
_FULL_WAIT = 0.25  # the longest wait for a finishing row while every slot is taken (the limit's window is 1 s)


_POLICIES: dict[str, HostPolicy] = {}
_POLICIES_LOCK = threading.Lock()
_RUNS_KEPT = 4


def shared_policy(run: str, params: PolitenessParams) -> HostPolicy:
    """One policy per run and process: every download task of a worker shares its hosts' limits, and
    a later run in the same process (a library user, a test) starts with no host paused or down."""
    with _POLICIES_LOCK:
        if run not in _POLICIES:
            for old in list(_POLICIES)[:-_RUNS_KEPT]:
                del _POLICIES[old]
            _POLICIES[run] = HostPolicy(params)
        return _POLICIES[run]


@dataclass
class _Row:
    sample: Sample
    host: str
    started: float | None = None  # first attempt, for the deadline
    throttled: int = 0


class InFlightLimit:
    """How many requests a worker keeps in flight: AIMD on the worker process's CPU.

    Every `window` seconds (a quarter of it while still doubling, to reach a
    far-away web's need within a couple of seconds) it looks at the CPU time
    the process used (all its threads: decode, resize, encode) per wall second.
    Below `cpu_target` cores while rows waited for a free slot (and bodies were
    not piling up for the CPU: `HostScheduler`), the limit grows
    (doubling until the first cut, then by an eighth, at least a quarter of
    `start`; doubling again while under half the target); at or above it, the
    CPU is the bottleneck and the limit is cut by
    a tenth (never below `start`).  The window restarts when the worker starts
    downloading (`restart_window`): CPU spent before (imports, setup, other
    stages) is not the downloads', and one such window read as saturated once
    ended the doubling at the start, leaving a worker at 56 in flight 8 s into
    a run against a 1 s web (its twin reached 360).  Cuts are gentle and growth quick because
    too few in flight costs rows/s (the latency shows again) while a few too
    many cost only some memory (bounded by pipeline.media.body_budget).  A
    Python worker's decode/resize mostly holds the GIL, so about one core is
    its saturation.

    The decode+resize of the rows that ended in a window (`row_processed`) is
    measured too, for the progress line only: how many were at it at once
    (`decoding`) and their wall time per CPU second (`contention`).  It is not
    a signal to cut on: with many network threads in one process, the GIL
    makes a decode take several times its CPU time even while the CPU has
    headroom (on a quiet machine at 300 ms that rule held 0.67 of the
    zero-latency rate, this one 0.93; benchmarks/README.md, "Latency").
    """

    GROWTH_AFTER_CUT = 0.125  # of the limit, per window
    LEAST_GROWTH = 0.25  # of `start`
    CUT = 0.9
    IDLE = 0.5  # of `cpu_target`: below it the limit doubles again, even after a cut

    def __init__(self, start: int, ceiling: int, cpu_target: float = 0.9, window: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, cpu_clock: Callable[[], float] = time.process_time):
        self.value = self._start = min(start, ceiling)
        self._ceiling, self._cpu_target, self._window = ceiling, cpu_target, window
        self._clock, self._cpu_clock = clock, cpu_clock
        self._doubling, self._waited = True, False
        self._since, self._cpu_since = clock(), cpu_clock()
        self._processing = [0.0, 0.0]  # wall and CPU seconds of decode+resize in this window
        self._lock = threading.Lock()
        self.cpu_cores = 0.0  # the last window's CPU use, for the progress log
        self.decoding = self.contention = 0.0  # the last window's, for the progress log

    def restart_window(self) -> None:
        """Starts a new window now: what the process spent so far is not the downloads' (call when a
        worker starts downloading)."""
        self._since, self._cpu_since, self._waited = self._clock(), self._cpu_clock(), False
        with self._lock:
            self._processing = [0.0, 0.0]

    def rows_waited(self) -> None:
        """Rows were queued while every slot was taken."""
        self._waited = True

    def row_processed(self, wall: float, cpu: float) -> None:
        """A row's decode+resize took `wall` seconds, `cpu` of them on a CPU (thread-safe)."""
        with self._lock:
            self._processing[0] += wall
            self._processing[1] += cpu

    def update(self) -> None:
        now = self._clock()
        wall = now - self._since
        if wall < (self._window / 4 if self._doubling else self._window):
            return
        cpu = self._cpu_clock()
        self.cpu_cores = (cpu - self._cpu_since) / wall
        with self._lock:
            processing_wall, processing_cpu = self._processing
            self._processing = [0.0, 0.0]
        self.decoding = processing_wall / wall
        self.contention = processing_wall / processing_cpu if processing_cpu > 0 else 0.0
        if self.cpu_cores >= self._cpu_target:
            self.value = max(self._start, int(self.value * self.CUT))
            self._doubling = False
        elif self._waited:
            doubling = self._doubling or self.cpu_cores < self._cpu_target * self.IDLE
            step = self.value if doubling else max(1, int(self._start * self.LEAST_GROWTH),
                                                   int(self.value * self.GROWTH_AFTER_CUT))
            self.value = min(self._ceiling, self.value + step)
        self._since, self._cpu_since, self._waited = now, cpu, False


def fixed_limit(value: int) -> InFlightLimit:
    return InFlightLimit(value, value)


# fetch(sample) -> its result, or the rest of its work (a function returning the result) once the response
# is in hand; it reports its request to the policy itself.
FetchRow = Callable[[Sample], "Sample | Reject | Callable[[], Sample | Reject]"]


class HostScheduler:
    def __init__(self, policy: HostPolicy, pool: Executor, fetch: FetchRow, max_in_flight: "InFlightLimit | int",
                 throttle_retries: int, deadline: float, clock: Callable[[], float] = time.monotonic,
                 processing_pool: Executor | None = None, max_processing: int = 0):
        """max_in_flight: requests in flight, a fixed number or an `InFlightLimit` that follows the CPU (`pool`
        must have as many threads as its ceiling).  The rest of a row's work, when its fetch returns it, runs
        on `processing_pool` (default: `pool`); requests and rows there together stay under the limit plus
        `max_processing`."""
        self._policy, self._pool, self._fetch = policy, pool, fetch
        self._limit = fixed_limit(max_in_flight) if isinstance(max_in_flight, int) else max_in_flight
        self._processing_pool, self._max_processing = processing_pool or pool, max_processing
        self._throttle_retries, self._deadline = throttle_retries, deadline
        self._clock = clock
        self._queues: dict[str, deque[_Row]] = {}
        self._running: dict[Future, _Row] = {}  # requests in flight
        self._processing: dict[Future, _Row] = {}  # rows past their response
        self._done: SimpleQueue[Future] = SimpleQueue()  # futures of both kinds, as they finish

    def run(self, samples: Iterable[Sample]) -> Iterator[Sample | Reject]:
        """Results in the order they finish."""
        self.add(samples)
        yield from self.drive(until_idle=True)

    def add(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            host = host_of(sample.url)
            self._queues.setdefault(host, deque()).append(_Row(sample, host))

    @property
    def in_flight(self) -> int:
        """Requests in flight: rows whose response is not yet in hand."""
        return len(self._running)

    @property
    def processing(self) -> int:
        """Rows past their response, waiting for or running their processing."""
        return len(self._processing)

    def drive(self, until_idle: bool) -> Iterator[Sample | Reject]:
        """Runs rows, yielding results as they finish.  With `until_idle` until every row is done;
        else it returns as soon as a thread is free that no queued row may use (their hosts must wait),
        so the caller can add rows of other hosts."""
        while self._queues or self._running or self._processing:
            self._limit.update()
            yield from self._dispatch()
            if not until_idle and not self._full():
                return
            if not self._running and not self._processing:
                time.sleep(self._next_wait())
                continue
            try:
                future = self._done.get(timeout=self._wait_for_a_result())
            except Empty:
                continue
            while future is not None:
                yield from self._finished(future)
                try:
                    future = self._done.get_nowait()
                except Empty:
                    future = None

    def _dispatch(self) -> Iterator[Reject]:
        """Starts rows round-robin over the hosts that may take a request now."""
        progress = True
        while progress and not self._full():
            progress = False
            for host in list(self._queues):
                if self._full():
                    break
                if host and self._is_down(host):
                    yield from self._reject_host(host)
                elif not host or self._policy.try_start(host):
                    self._start(self._queues[host].popleft())
                    progress = True
                    # To the back of the line: a slot freed later goes to the next host, so hosts drain
                    # evenly and the last rows are not all one host's (held to its connection cap).
                    queue = self._queues.pop(host)
                    if queue:
                        self._queues[host] = queue
        if self._queues and len(self._running) >= self._limit.value and self._cpu_keeps_up():
            self._limit.rows_waited()  # some may only wait for their host's turn; then growth costs nothing

    def _full(self) -> bool:
        """No request may be sent now: every slot is taken, or the bodies waiting for the CPU have taken
        their `max_processing` and some of the slots (more requests would only pile up bodies)."""
        return (len(self._running) >= self._limit.value
                or len(self._running) + len(self._processing) >= self._limit.value + self._max_processing)

    def _cpu_keeps_up(self) -> bool:
        """Bodies do not pile up waiting for the CPU: more requests in flight could help."""
        return not self._max_processing or len(self._processing) < self._max_processing

    def _is_down(self, host: str) -> bool:
        try:
            self._policy.wait_time(host)
        except HostDown:
            return True
        return False

    def _reject_host(self, host: str) -> Iterator[Reject]:
        for row in self._queues.pop(host):
            yield row.sample.reject("download", "host_unavailable")

    def _start(self, row: _Row) -> None:
        if row.started is None:
            row.started = self._clock()
        self._submit(self._pool, self._running, row, self._fetch, row.sample)

    def _submit(self, pool: Executor, futures: dict[Future, _Row], row: _Row, work: Callable, *args) -> None:
        future = pool.submit(work, *args)
        futures[future] = row
        future.add_done_callback(self._done.put)  # runs at once if it is done already

    def _finished(self, future: Future) -> Iterator[Sample | Reject]:
        if future in self._processing:
            del self._processing[future]
            yield future.result()
            return
        row = self._running.pop(future)
        result = future.result()
        if callable(result):  # the response is in hand: its slot is free, the rest waits for the CPU
            self._submit(self._processing_pool, self._processing, row, result)
            return
        if isinstance(result, Reject) and result.stage == "download" and result.reason in _THROTTLED_REASONS:
            retry = self._retry_throttled(row, result)
            if retry is not None:
                yield retry
            return
        yield result

    def _retry_throttled(self, row: _Row, result: Reject) -> Reject | None:
        """None if the row went back to its queue; else its final reject."""
        if row.throttled >= self._throttle_retries:
            return result
        resume_at = self._clock() + self._policy.paused_for(row.host)
        if resume_at - row.started > self._deadline:
            return row.sample.reject("download", "host_backoff_exceeded")
        row.throttled += 1
        self._queues.setdefault(row.host, deque()).append(row)
        return None

    def _wait_for_a_result(self) -> float:
        """How long to wait for a finishing row while some run.  With every slot taken only a finishing row
        lets another start, so no host need be looked at: scanning them all after every row cost ~1.5 us a
        host, O(hosts) per row (a task of 1,000 hosts: 1.5 ms a row)."""
        return _FULL_WAIT if self._full() else self._next_wait()

    def _next_wait(self) -> float:
        """How long to wait for a finishing row before looking at the queues again."""
        waits = []
        for host in self._queues:
            try:
                waits.append(self._policy.wait_time(host) if host else 0.0)
            except HostDown:
                return 0.0  # reject its rows at once
        return min(max(min(waits), 0.001), 1.0) if waits else 1.0
