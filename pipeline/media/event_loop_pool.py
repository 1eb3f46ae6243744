"""An `Executor` whose work items are coroutine functions, all run on one event loop in a thread of its own.

The host scheduler (pipeline.media.host_scheduler) hands rows to an
`Executor` and hears of them through `concurrent.futures` futures; this one
lets it drive the event-loop fetcher (pipeline.media.async_download)
unchanged: `submit(fetch, row)` starts `fetch(row)` on the loop and returns
a future that completes, from the loop's thread, when the coroutine does.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor, Future
from typing import Any, Awaitable, Callable, Coroutine

_SHUTDOWN_GRACE = 5.0  # seconds the loop's tasks get to finish on shutdown before they are cancelled


class EventLoopPool(Executor):
    def __init__(self, name: str = "fetch-loop"):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    def submit(self, fn: Callable[..., Awaitable[Any]], /, *args, **kwargs) -> Future:
        if self._closed:
            raise RuntimeError("submit after shutdown")
        return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self._loop)

    def run(self, coroutine: Coroutine, timeout: float | None = None) -> Any:
        """Run `coroutine` on the loop and wait for its result (for callers outside the loop)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops the loop once its tasks are done (cancelled after a grace period, or at once with
        `cancel_futures`); with `wait`, returns when its thread has ended."""
        if self._closed:
            return
        self._closed = True
        asyncio.run_coroutine_threadsafe(self._drain(0.0 if cancel_futures else _SHUTDOWN_GRACE), self._loop)
        if wait:
            self._thread.join()
            self._loop.close()

    async def _drain(self, grace: float) -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._loop.stop()
