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
    return InFlightLimit(start, ceiling, window=1.0, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)


def window(limit: InFlightLimit, clocks: Clocks, contention: float, waited: bool = True, seconds: float = 1.0,
           cores: float = 0.5, decoding: float = 3.0) -> int:
    """One window with `decoding` rows in decode+resize at once, which took `contention` x their CPU time."""
    if waited:
        limit.rows_waited()
    limit.row_processed(wall=decoding * seconds, cpu=decoding * seconds / contention)
    clocks.spend(seconds, cores)
    limit.update()
    return limit.value


def test_grows_by_doubling_while_rows_wait_for_a_slot_but_not_for_the_cpu_up_to_the_ceiling():
    clocks = Clocks()
    limit = limit_with(clocks)
    assert [window(limit, clocks, 1.1, seconds=0.25, cores=0.3) for _ in range(5)] == [64, 128, 256, 512, 512]
    assert limit.cpu_cores == pytest.approx(0.3) and limit.contention == pytest.approx(1.1)


def test_a_busy_cpu_that_rows_do_not_wait_for_is_no_reason_to_stop_growing():
    """A worker using 0.95 of a core whose rows still get it at once: more in flight still pays (the old rule
    cut at 0.9 cores and so kept the worker 10% below what it could do)."""
    clocks = Clocks()
    limit = limit_with(clocks)
    assert [window(limit, clocks, 1.2, seconds=0.25, cores=0.95) for _ in range(3)] == [64, 128, 256]


def test_rows_slowed_by_other_processes_while_the_worker_waits_on_the_network_still_grow_the_limit():
    """A loaded machine: each row's decode takes 3x its CPU time, but they come one at a time (0.5 at once):
    the worker is idle between them, and more in flight gives it more rows."""
    clocks = Clocks()
    limit = limit_with(clocks)
    assert window(limit, clocks, 3.0, seconds=0.25, decoding=0.5) == 64
    assert window(limit, clocks, 3.0, seconds=0.25, decoding=2.5) == 57  # now they queue: cut


def test_does_not_grow_when_no_row_waited_for_a_slot():
    clocks = Clocks()
    limit = limit_with(clocks)
    assert window(limit, clocks, 1.0, waited=False) == 32


def test_waits_a_whole_window_before_judging():
    clocks = Clocks()
    limit = limit_with(clocks)
    assert window(limit, clocks, 1.0, seconds=0.1) == 32  # under a quarter window: no look yet
    assert window(limit, clocks, 1.0, seconds=0.2) == 64


def test_rows_taking_turns_for_the_cpu_cut_the_limit_then_it_grows_slowly_and_never_below_the_start():
    clocks = Clocks()
    limit = limit_with(clocks)
    for _ in range(3):
        window(limit, clocks, 1.0, seconds=0.25)  # 256
    assert window(limit, clocks, 2.5) == 230  # a tenth off
    assert window(limit, clocks, 1.2) == 258  # + an eighth, not doubling any more
    for _ in range(40):
        window(limit, clocks, 3.0)
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


def test_more_than_214_small_requests_go_in_flight_with_the_default_params():
    """The ceiling is max_in_flight, no longer body_budget_bytes // max_bytes = 4 GiB // 20 MB = 214: each body
    reserves its own size (pipeline.media.body_budget)."""
    limit = InFlightLimit(32, in_flight_ceiling(DownloadParams()), window=0.1, cpu_clock=lambda: 0.0)
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
