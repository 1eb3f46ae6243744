"""Both fetchers behind one blocking interface, so the downloader's tests hold for each.

`pytest_fetchers(module)` gives a test module an autouse fixture, parametrized
"threads" / "async", that swaps the module's `Downloader` for the event-loop
fetcher in the "async" runs; `forbid_connections` fails a test loudly when
either fetcher opens a connection it must not.
"""
from __future__ import annotations

import asyncio.selector_events
import socket
import sys

import pytest
import urllib3

from pipeline.media.async_download import AsyncDownloader
from pipeline.media.event_loop_pool import EventLoopPool

FETCHERS = ["threads", "async"]
_LOOP: EventLoopPool | None = None


def _loop() -> EventLoopPool:
    global _LOOP
    if _LOOP is None:
        _LOOP = EventLoopPool("test-fetch-loop")
    return _LOOP


class BlockingAsyncDownloader:
    """`AsyncDownloader` with `Downloader`'s blocking `fetch` and `close`, on one loop shared by the tests."""

    def __init__(self, params, **options):
        self.params = params
        self.downloader = AsyncDownloader(params, **options)

    def fetch(self, url, expect_image=True, hold=None):
        return _loop().run(self.downloader.fetch(url, expect_image=expect_image, hold=hold))

    def close(self):
        _loop().run(self.downloader.close())


def each_fetcher(module_name: str):
    """An autouse fixture for the module `module_name`: its tests run once per fetcher."""

    @pytest.fixture(autouse=True, params=FETCHERS)
    def fetcher(request, monkeypatch):
        if request.param == "async":
            monkeypatch.setattr(sys.modules[module_name], "Downloader", BlockingAsyncDownloader)
        return request.param

    return fetcher


def forbid_connections(monkeypatch, allowed=lambda: False) -> None:
    """Any connection either fetcher opens while `allowed()` is false fails the test."""
    real_urllib3 = urllib3.util.connection.create_connection
    real_socket = socket.create_connection
    real_loop = asyncio.selector_events.BaseSelectorEventLoop.sock_connect

    def check():
        assert allowed(), "a connection was opened that the guard should have refused"

    def urllib3_connect(*args, **kwargs):
        check()
        return real_urllib3(*args, **kwargs)

    def socket_connect(*args, **kwargs):
        check()
        return real_socket(*args, **kwargs)

    async def loop_connect(self, sock, address):
        check()
        return await real_loop(self, sock, address)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", urllib3_connect)
    monkeypatch.setattr(socket, "create_connection", socket_connect)
    monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "sock_connect", loop_connect)
