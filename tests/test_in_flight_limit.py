"""The in-flight limit follows the worker's CPU, not the network's latency (issue 18)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.media.download import DownloadParams
from pipeline.media.host_scheduler import HostScheduler, InFlightLimit
from pipeline.media.politeness import HostPolicy, PolitenessParams
from pipeline.core.records import Sample
from pipeline.engine.download_images import in_flight_ceiling


class Clocks:
    """Wall and CPU time the test moves by hand."""

    def __init__(self):
        self.wall, self.cpu = 100.0, 5.0

    def spend(self, seconds: float, cores: float) -> None:
        self.wall += seconds
        self.cpu += seconds * cores


def limit_with(clocks: Clocks, start: int = 32, ceiling: int = 512) -> InFlightLimit:
    return InFlightLimit(start, ceiling, cpu_target=0.9, window=1.0, clock=lambda: clocks.wall,
                         cpu_clock=lambda: clocks.cpu)


def window(limit: InFlightLimit, clocks: Clocks, cores: float, waited: bool = True, seconds: float = 1.0) -> int:
    if waited:
        limit.rows_waited()
    clocks.spend(seconds, cores)
    limit.update()
    return limit.value


def test_grows_by_doubling_while_the_cpu_has_headroom_and_rows_wait_up_to_the_ceiling():
    clocks = Clocks()
    limit = limit_with(clocks)
    assert [window(limit, clocks, cores=0.3, seconds=0.25) for _ in range(5)] == [64, 128, 256, 512, 512]
    assert limit.cpu_cores == pytest.approx(0.3)


def test_does_not_grow_when_no_row_waited_for_a_slot():
    clocks = Clocks()
    limit = limit_with(clocks)
    assert window(limit, clocks, cores=0.1, waited=False) == 32


def test_waits_a_whole_window_before_judging():
    clocks = Clocks()
    limit = limit_with(clocks)
    assert window(limit, clocks, cores=0.1, seconds=0.1) == 32  # under a quarter window: no look yet
    assert window(limit, clocks, cores=0.1, seconds=0.2) == 64


def test_a_saturated_cpu_cuts_the_limit_then_it_grows_slowly_and_never_below_the_start():
    clocks = Clocks()
    limit = limit_with(clocks)
    for _ in range(3):
        window(limit, clocks, cores=0.2, seconds=0.25)  # 256
    assert window(limit, clocks, cores=1.0) == 230  # a tenth off
    assert window(limit, clocks, cores=0.5) == 258  # + an eighth, not doubling any more
    assert limit_with(clocks, start=32, ceiling=40).value == 32
    for _ in range(40):
        window(limit, clocks, cores=1.2)
    assert limit.value == 32


def test_a_start_above_the_ceiling_is_the_ceiling():
    assert limit_with(Clocks(), start=64, ceiling=16).value == 16


def far_away_rows(limit: InFlightLimit, rows: int, hosts: int, seconds: float) -> tuple[list, list, int]:
    """Runs rows that wait `seconds` each on the network and cost no CPU: (rows, results, most in flight)."""
    policy = HostPolicy(PolitenessParams(per_host_rate=0, per_host_connections=1000))
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow_fetch(sample: Sample) -> Sample:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(seconds)
        with lock:
            in_flight[0] -= 1
        return sample

    samples = [Sample(key=f"{i:05d}", shard_id=0, url=f"http://h{i % hosts}/{i}.jpg") for i in range(rows)]
    with ThreadPoolExecutor(limit._ceiling) as pool:
        results = list(HostScheduler(policy, pool, slow_fetch, limit, throttle_retries=0, deadline=30).run(samples))
    return samples, results, peak[0]


def test_the_scheduler_raises_requests_in_flight_when_the_network_is_slow_and_the_cpu_idle():
    """More rows go in flight than `threads`."""
    limit = InFlightLimit(4, 64, window=0.2, cpu_clock=lambda: 0.0)
    rows, results, peak = far_away_rows(limit, 1500, hosts=8, seconds=0.05)
    assert sorted(r.key for r in results) == [r.key for r in rows]
    assert limit.value == 64 and peak > 32


def test_more_than_214_small_requests_go_in_flight_when_max_in_flight_allows():
    """The ceiling is max_in_flight, no longer body_budget_bytes // max_bytes = 4 GiB // 20 MB = 214: each body
    reserves its own size (pipeline.media.body_budget)."""
    limit = InFlightLimit(32, in_flight_ceiling(DownloadParams(max_in_flight=512)), window=0.1, cpu_clock=lambda: 0.0)
    rows, results, peak = far_away_rows(limit, 3000, hosts=64, seconds=0.3)
    assert len(results) == len(rows) and peak > 214


def test_the_progress_line_tells_requests_in_flight_and_where_row_time_goes(caplog):
    from pipeline.engine.download_images import _Progress, _RowTimes

    times = _RowTimes()
    times.add(network=0.3, processing=0.1)
    times.add(network=0.5, processing=0.1)
    progress = _Progress("download", every=0.0, detail=lambda: "{:.0%} network".format(times.take()[0] / 1.0))
    with caplog.at_level("INFO", logger="curate"):
        progress.tick()
    assert "80% network" in caplog.text and "1 samples on this worker" in caplog.text
    assert times.take() == (0.0, 0.0)  # taken: the next line covers only what came after
