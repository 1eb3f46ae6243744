"""Bodies reserve their own size in the worker's budget, not `max_bytes` each (issue 18)."""
from __future__ import annotations

import dataclasses
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.media.body_budget import UNDECLARED_START, BodyBudget
from pipeline.media.download import Downloader, DownloadParams
from tests.localweb_faults import FaultyWeb
from pipeline.core.params import ParamError
from pipeline.engine.download_images import in_flight_ceiling
from tests.fetchers import each_fetcher

fetcher = each_fetcher(__name__)

LOCAL = DownloadParams(timeout=2.0, retries=0, backoff=0.01, allow_private_network=True, deadline=5.0)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    with FaultyWeb(tmp_path_factory.mktemp("web")) as server:
        yield server


def big(web: FaultyWeb, size: int, length: str) -> str:
    return web.url("_fault/big") + "?" + urllib.parse.urlencode({"bytes": size, "length": length})


def fetch_held(url: str, budget: BodyBudget, **changes):
    """The fetch's result and how many bytes its hold had when the fetch returned."""
    downloader = Downloader(dataclasses.replace(LOCAL, **changes))
    hold = budget.hold()
    try:
        result = downloader.fetch(url, hold=hold)
        return result, hold.bytes
    finally:
        hold.release()
        downloader.close()


# --- the budget itself -----------------------------------------------------------------

def test_a_hold_waits_for_bytes_given_back_and_fails_when_they_do_not_come_in_time():
    budget = BodyBudget(1000)
    first, second = budget.hold(), budget.hold()
    assert first.resize(800, timeout=0)
    assert not second.resize(300, timeout=0.05) and second.bytes == 0
    threading.Timer(0.05, first.release).start()
    assert second.resize(300, timeout=2.0) and budget.held == 300
    assert not second.resize(1001, timeout=5.0)  # more than the whole budget: at once, not after 5 s


def test_a_growing_hold_goes_before_new_ones():
    budget = BodyBudget(1000)
    growing, other, new = budget.hold(), budget.hold(), budget.hold()
    assert growing.resize(500, 0) and other.resize(400, 0)
    grown = []
    waiter = threading.Thread(target=lambda: grown.append(growing.resize(800, timeout=2.0)))
    waiter.start()
    time.sleep(0.05)
    assert not new.resize(100, timeout=0.05)  # 100 bytes are free, but the growing hold waits for more
    other.release()
    waiter.join()
    assert grown == [True] and budget.held == 800


# --- the downloader reads no body past its hold ------------------------------------------------

def test_a_declared_body_reserves_its_length_not_max_bytes(web):
    budget = BodyBudget(4 << 30)
    result, held = fetch_held(big(web, 200_000, "yes"), budget)
    assert result.ok and len(result.data) == 200_000
    assert held == 200_000 and budget.peak == 200_000  # max_bytes is 20 MB
    assert budget.held == 0  # released


# aiohttp's parser may refuse such an answer outright ("data after Connection: close") when the surplus
# arrives with the headers, before any body is held; http.client reads the declared length and stops.
REFUSED_BY_PARSER = {"threads": set(), "async": {"connection_error"}}


def test_a_body_longer_than_its_content_length_is_cut_at_the_declared_length(web, fetcher):
    budget = BodyBudget(4 << 30)
    result, held = fetch_held(big(web, 300_000, "1000"), budget)
    if result.reason in REFUSED_BY_PARSER[fetcher]:
        assert budget.peak == 0 and held == 0
        return
    assert budget.peak == 1000 and held == 1000
    assert result.data is None or len(result.data) == 1000


@pytest.mark.parametrize("length", ["chunked", "no"])
def test_a_body_of_no_declared_length_grows_its_hold_by_doubling(web, length):
    budget = BodyBudget(4 << 30)
    result, held = fetch_held(big(web, 3_000_000, length), budget)
    assert result.ok and len(result.data) == 3_000_000
    assert held == 4 * UNDECLARED_START  # 1 MiB, 2 MiB, 4 MiB
    assert budget.peak == held


def test_a_body_whose_bytes_cannot_be_had_before_the_deadline_fails_with_a_clear_reason(web):
    budget = BodyBudget(3_000_000)
    taken = budget.hold()
    assert taken.resize(2_500_000, 0)
    started = time.monotonic()
    result, held = fetch_held(big(web, 1_000_000, "yes"), budget, deadline=1.0)
    assert result.reason == "body_budget_exhausted" and held == 0
    assert time.monotonic() - started < 3.0
    result, _ = fetch_held(big(web, 2_000_000, "chunked"), budget, deadline=1.0)  # 500 kB free: 1 MiB can't be had
    assert result.reason == "body_budget_exhausted" and budget.held == 2_500_000


def test_a_failed_body_gives_its_bytes_back(web):
    budget = BodyBudget(4 << 30)
    result, held = fetch_held(big(web, 3_000_000, "chunked"), budget, max_bytes=2_000_000)
    assert result.reason == "too_large" and held == 0 and budget.peak <= 2_000_000


def test_bodies_in_flight_never_exceed_the_budget_whatever_they_declare(web, fetcher):
    """Many threads, bodies declared, undeclared, chunked and lying, a budget that fits a few only."""
    budget = BodyBudget(3 * UNDECLARED_START)
    downloader = Downloader(dataclasses.replace(LOCAL, deadline=10.0))
    urls = [big(web, 600_000, length) for length in ("yes", "no", "chunked", "5000")] * 6

    def one(url):
        hold = budget.hold()
        try:
            result = downloader.fetch(url, hold=hold)
            assert result.data is None or len(result.data) <= hold.bytes  # never read past its hold
            return result
        finally:
            time.sleep(0.02)  # decoding, still holding the body
            hold.release()

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, urls))
    downloader.close()
    assert budget.peak <= budget.total and budget.held == 0
    assert {r.reason for r in results} <= {None, "body_budget_exhausted", "not_an_image"} | REFUSED_BY_PARSER[fetcher]
    assert sum(r.ok for r in results) >= len(urls) // 2


# --- what this frees -------------------------------------------------------------------------

def test_the_in_flight_ceiling_is_no_longer_the_budget_over_max_bytes():
    assert in_flight_ceiling(DownloadParams()) == DownloadParams().max_in_flight
    # was body_budget_bytes // max_bytes: 100 MB // 1 MB = 100, now whatever max_in_flight says
    assert in_flight_ceiling(DownloadParams(max_bytes=1_000_000, body_budget_bytes=100_000_000, max_in_flight=512)) == 512
    assert in_flight_ceiling(DownloadParams(max_in_flight=64)) == 64
    assert in_flight_ceiling(DownloadParams(threads=8, max_in_flight=4)) == 8  # a fixed limit of `threads`


def test_a_budget_smaller_than_max_bytes_is_refused():
    with pytest.raises(ParamError, match="body_budget_bytes"):
        DownloadParams(max_bytes=10_000_000, body_budget_bytes=1_000_000)
