"""The bytes of response bodies a worker may hold at once, reserved by each body's size.

A request reserves memory for its body when its headers arrive: the declared
Content-Length (at most `max_bytes`), or `UNDECLARED_START` for a body of no
declared length (chunked, or ended by closing the connection), grown by
doubling as it arrives.  The body is never read past its reservation, so the
bodies held by the worker (while they arrive, and while they are decoded)
never add up to more than the budget, whatever the servers declare.  So the
number of requests in flight is no longer bounded by `budget // max_bytes`:
a thousand 100 kB images take 100 MB, not a thousand times `max_bytes`.

A reservation that cannot be had before the fetch's deadline fails the row
with `body_budget_exhausted` (pipeline.media.download).  Growing reservations go
before new ones: they hold memory already and free it once they finish, so
the budget cannot fill up with half-read bodies that wait on one another.
"""
from __future__ import annotations

import contextlib
import threading

UNDECLARED_START = 1 << 20  # bytes first reserved for a body of no declared length


class BodyBudget:
    """Thread-safe: one per worker process, shared by all its download threads."""

    def __init__(self, total_bytes: int):
        self.total = total_bytes
        self.held = 0  # bytes reserved now (for the progress line and tests)
        self.peak = 0
        self._growing = 0  # reservations waiting to grow: they go first
        self._changed = threading.Condition()

    def hold(self) -> "BodyHold":
        return BodyHold(self)

    def take(self, nbytes: int, timeout: float, growing: bool) -> bool:
        """Reserve `nbytes` more, waiting up to `timeout` seconds for them; False if they did not come."""
        with self._changed:
            self._growing += growing
            try:
                fits = lambda: self.held + nbytes <= self.total and (growing or not self._growing)  # noqa: E731
                if not self._changed.wait_for(fits, timeout=max(timeout, 0.0)):
                    return False
                self.held += nbytes
                self.peak = max(self.peak, self.held)
                return True
            finally:
                self._growing -= growing
                if growing:
                    self._changed.notify_all()  # new reservations held back for it may go now

    @contextlib.contextmanager
    def growth_pending(self, growing: bool):
        """While open, a reservation that polls for bytes (an event loop cannot block in `take`) counts as
        waiting: if it is `growing`, new reservations are held back for it as for a blocked `take`."""
        with self._changed:
            self._growing += growing
        try:
            yield
        finally:
            with self._changed:
                self._growing -= growing
                self._changed.notify_all()

    def give_back(self, nbytes: int) -> None:
        with self._changed:
            self.held -= nbytes
            self._changed.notify_all()


class BodyHold:
    """One fetch's reservation: resized per response body, given back when the row is done with the body."""

    def __init__(self, budget: BodyBudget):
        self._budget = budget
        self.bytes = 0

    def resize(self, nbytes: int, timeout: float) -> bool:
        """Hold exactly `nbytes`; False if more could not be had in `timeout` s (at once if over the budget)."""
        if nbytes > self._budget.total:
            return False
        if nbytes <= self.bytes:
            self._budget.give_back(self.bytes - nbytes)
        elif not self._budget.take(nbytes - self.bytes, timeout, growing=self.bytes > 0):
            return False
        self.bytes = nbytes
        return True

    def waiting(self):
        """A context in which this hold polls for more bytes (`BodyBudget.growth_pending`)."""
        return self._budget.growth_pending(self.bytes > 0)

    def release(self) -> None:
        self.resize(0, 0.0)
