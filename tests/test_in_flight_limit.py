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


def test_far_under_the_target_the_limit_doubles_again_after_a_cut():
    clocks = Clocks()
    limit = limit_with(clocks)
    assert window(limit, clocks, cores=1.0) == 32  # cut at the start: no more doubling at the usual pace
    assert window(limit, clocks, cores=0.5) == 40  # above half the target: + a quarter of the start
    assert [window(limit, clocks, cores=0.3) for _ in range(3)] == [80, 160, 320]  # far under it: doubling


def test_a_restarted_window_leaves_out_the_cpu_spent_before_the_downloads():
    clocks = Clocks()
    limit = limit_with(clocks)
    clocks.spend(2.0, cores=1.0)  # the worker's setup and imports, before its first row
    limit.restart_window()
    assert [window(limit, clocks, cores=0.6, seconds=0.25) for _ in range(3)] == [64, 128, 256]
    unrestarted = limit_with(clocks)
    clocks.spend(2.0, cores=1.0)
    assert window(unrestarted, clocks, cores=0.6, seconds=0.25) == 32  # the setup read as a saturated CPU


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



def test_a_rows_decode_runs_on_the_processing_pool_and_frees_its_request_slot():
    """A fetch that returns the rest of its row: requests keep going out (at most `max_in_flight`) while
    earlier bodies wait for the processing threads, and requests + waiting bodies stay under the limit plus
    `max_processing`."""
    policy = HostPolicy(PolitenessParams(per_host_rate=0, per_host_connections=1000))
    counts, peaks, lock = {"network": 0, "both": 0}, {"network": 0, "both": 0}, threading.Lock()
    decoded_on: set[str] = set()

    def count(**changes: int) -> None:
        with lock:
            for name, change in changes.items():
                counts[name] += change
                peaks[name] = max(peaks[name], counts[name])

    def fetch(sample: Sample):
        count(network=1, both=1)
        time.sleep(0.01)
        count(network=-1)

        def decode() -> Sample:
            decoded_on.add(threading.current_thread().name.split("_")[0])
            time.sleep(0.005)
            count(both=-1)
            return sample
        return decode

    samples = [Sample(key=f"{i:05d}", shard_id=0, url=f"http://h{i % 8}/{i}.jpg") for i in range(300)]
    with ThreadPoolExecutor(4, thread_name_prefix="net") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="decode") as decoders:
        scheduler = HostScheduler(policy, pool, fetch, 4, throttle_retries=0, deadline=30,
                                  processing_pool=decoders, max_processing=8)
        results = list(scheduler.run(samples))
    assert sorted(r.key for r in results) == [s.key for s in samples]
    assert decoded_on == {"decode"}
    assert peaks["network"] <= 4  # the request limit holds
    assert 4 < peaks["both"] <= 12  # bodies waited for the decoder beside the requests, bounded
    assert scheduler.in_flight == scheduler.processing == 0


def test_rows_past_their_response_do_not_make_the_limit_grow():
    """When bodies wait for the CPU, more requests cannot help: the limit hears no waiting rows."""
    policy = HostPolicy(PolitenessParams(per_host_rate=0, per_host_connections=1000))
    limit = InFlightLimit(2, 64, window=0.05, cpu_clock=lambda: 0.0)

    def fetch(sample: Sample):
        return lambda: time.sleep(0.01) or sample  # an instant response, a slow decode

    samples = [Sample(key=f"{i:05d}", shard_id=0, url=f"http://h{i % 8}/{i}.jpg") for i in range(60)]
    with ThreadPoolExecutor(64) as pool, ThreadPoolExecutor(1) as decoders:
        list(HostScheduler(policy, pool, fetch, limit, throttle_retries=0, deadline=30,
                           processing_pool=decoders, max_processing=2).run(samples))
    assert limit.value <= 4
