"""At most N requests at once to one host from one process (download.max_connections_per_host).

Keyed by host name, counted while a request and its body are in flight;
a host with nothing in flight has no entry, so a run over millions of hosts
holds only the busy ones.
"""
from __future__ import annotations

import contextlib
import threading


class NoSlot(TimeoutError):
    """No slot for the host freed up in time."""


class HostSlots:
    def __init__(self, limit: int):
        self.limit = limit
        self._busy: dict[str, int] = {}
        self._freed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, host: str, seconds: float):
        """A slot for `host` for the block; NoSlot if none frees up within `seconds`."""
        host = host.lower()
        with self._freed:
            if not self._freed.wait_for(lambda: self._busy.get(host, 0) < self.limit, timeout=max(seconds, 0.0)):
                raise NoSlot(f"no free connection slot for {host} within {seconds:.1f}s")
            self._busy[host] = self._busy.get(host, 0) + 1
        try:
            yield
        finally:
            with self._freed:
                left = self._busy[host] - 1
                if left:
                    self._busy[host] = left
                else:
                    del self._busy[host]
                self._freed.notify_all()

    def busy(self, host: str) -> int:
        return self._busy.get(host.lower(), 0)
