"""Downloading: the rows' images fetched, checked, decoded and resized in download tasks.

The run (pipeline.engine.run) is read (pipeline.engine.read_inputs) -> [stages
that need no image] (pipeline.engine.apply_stage) -> download+resize (here) ->
[stages that need the image]; then pipeline.engine.write_outputs writes the
shards and the rejects from every step, counted into the audit.
"""
from __future__ import annotations

import functools
import gc
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from pipeline.core import layout
from pipeline.core.stage import Stage, StageContext
from pipeline.engine import checkpoint
from pipeline.engine.download_rows import (  # noqa: F401 -- fetch_and_resize: this module's API too
    DownloadHooks,
    fetch_and_resize,
    fetch_row,
    fetch_row_async,
    process_row,
)
from pipeline.engine.stored_images import ImageStore
from pipeline.media.download import Downloader, DownloadParams, FetchResult
from pipeline.media.host_scheduler import HostScheduler, InFlightLimit, shared_policy
from pipeline.media.politeness import THROTTLE_STATUSES, host_of, host_report, merge_host_tallies
from pipeline.media.imaging import ResizeParams
from pipeline.core.records import REJECTED, Reject, Sample
from pipeline.engine.worker_status import WorkerStatus
from pipeline.engine.writers import OutputParams
from pipeline.media.body_budget import BodyBudget, BodyHold

HOST_TALLY = "host_tally"
log = logging.getLogger("curate")


# ---------------------------------------------------------------- download

def _freeze_long_lived_objects() -> None:
    """Exempts what the worker holds so far (imported modules, Beam's own state) from garbage collection.

    Python's full collections walk every tracked object; in a Beam worker
    that is hundreds of thousands of them, and the per-row allocations of a download
    trigger such a walk often enough to cost ~15% of the worker's CPU.
    Freezing only skips scanning them: objects still die by reference count.
    Once per process: later calls would also freeze the rows in flight.
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()


_MAX_OPEN_TASKS = 4  # download tasks a worker interleaves (their rows wait in per-host queues)


def download_task(sample: Sample | Reject, output: OutputParams, rows_per_task: int) -> tuple[int, int]:
    """(shard id, task number in shard): the unit of download work and checkpointing."""
    return sample.shard_id, output.index_in_shard(sample.key) // rows_per_task


class _DownloadTask(beam.DoFn):
    """Downloads one task's rows with a bounded pool of threads, streaming results as they finish.

    Rows wait in per-host queues and get a thread only when their host may
    take a request (pipeline.media.host_scheduler, pipeline.media.politeness).  Results
    are also written to the task's checkpoint, which a resumed run reuses row
    by row instead of downloading again (pipeline.engine.checkpoint).  The number of
    requests in flight starts at `threads` and follows the worker's CPU
    (`InFlightLimit`) up to `in_flight_ceiling`.  A row's request thread only
    fetches: its decode and resize run on a few decoding threads in the order
    the responses came, and requests in flight plus bodies waiting for those
    threads stay under the limit plus `threads`.  Memory stays bounded by the
    bodies' reservations in the worker's `BodyBudget`.
    """

    def __init__(self, download: DownloadParams, resize: ResizeParams, hooks: DownloadHooks,
                 output: OutputParams, output_dir: str, run_token: str):
        self._download, self._resize, self._hooks = download, resize, hooks
        self._output, self._output_dir = output, output_dir
        self._run_token = run_token  # one per pipeline: hosts' state is shared within a run, never across
        self._done = Metrics.counter("download", "ok")
        self._failed = Metrics.counter("download", "failed")
        self._reused = Metrics.counter("download", "reused_from_checkpoint")

    def setup(self):
        _freeze_long_lived_objects()
        context = StageContext(self._download, self._resize)
        for stage in self._hooks.stages():
            stage.setup(context)
        self._policy = shared_policy(self._run_token, self._download.politeness())
        ceiling = in_flight_ceiling(self._download)
        self._limit = InFlightLimit(self._download.threads, ceiling)  # kept across bundles: it has learnt the CPU
        self._setup_fetcher(ceiling)
        self._decoders = ThreadPoolExecutor(max_workers=decoding_threads(), thread_name_prefix="decode")
        self._budget = BodyBudget(self._download.body_budget_bytes)
        self._times = _RowTimes()
        self._progress = _Progress("download", detail=self._progress_detail)
        # For the launcher's progress line: this worker's log is not shown by the local runner.
        self._status = WorkerStatus(layout.OutputLayout(self._output_dir).work, self._status_fields)

    def start_bundle(self):
        self._open: dict[tuple[int, int], list] = {}  # task -> [its checkpoint, rows not finished]
        self._hosts: dict[str, dict[str, float]] = {}  # host -> counters, for the audit's per-host table
        self._hosts_lock = threading.Lock()
        self._limit.restart_window()  # the setup's imports and earlier bundles' work are not this bundle's CPU
        self._scheduler = HostScheduler(self._policy, self._pool, self._fetch, self._limit,
                                        self._download.throttle_retries, self._download.deadline,
                                        processing_pool=self._decoders, max_processing=self._download.threads)

    def process(self, element):
        """Starts the task's rows beside those of the bundle's earlier tasks, so that a task of one slow or
        throttled host (a list sorted by domain) leaves the threads to the next task's hosts."""
        task, samples = element
        previous = checkpoint.load(self._output, self._output_dir, task)
        saved = checkpoint.TaskCheckpoint(self._output, self._output_dir, task)
        to_fetch = []
        for sample in samples:
            if sample.key in previous:
                self._reused.inc()
                yield saved.add(self._reuse(previous[sample.key]))
            else:
                to_fetch.append(sample)
        self._open[task] = [saved, len(to_fetch)]
        if not to_fetch:
            self._close(task)
        self._scheduler.add(to_fetch)
        yield from self._results(self._scheduler.drive(until_idle=False))
        while len(self._open) > _MAX_OPEN_TASKS:  # bounded: a few tasks' rows and checkpoints at a time
            yield from self._results(self._scheduler.drive(until_idle=True), until_open=_MAX_OPEN_TASKS)

    def finish_bundle(self):
        for result in self._results(self._scheduler.drive(until_idle=True)):
            yield WindowedValue(result, MIN_TIMESTAMP, [GlobalWindow()])
        if self._hosts:
            yield beam.pvalue.TaggedOutput(HOST_TALLY, WindowedValue(self._hosts, MIN_TIMESTAMP, [GlobalWindow()]))
        self._status.write(idle=True)  # until the next bundle

    def _count(self, host: str, **counts: float) -> None:
        with self._hosts_lock:
            mine = self._hosts.setdefault(host, {})
            for name, value in counts.items():
                mine[name] = mine.get(name, 0) + value

    def _results(self, finished, until_open: int | None = None):
        for result in finished:
            task = download_task(result, self._output, self._download.rows_per_task)
            downloaded = not isinstance(result, Reject)
            self._count(host_of(result.url), rows=1, downloaded=int(downloaded),
                        host_unavailable=int(not downloaded and result.reason == "host_unavailable"))
            yield self._finished(result, task, self._open[task][0])
            self._open[task][1] -= 1
            if self._open[task][1] == 0:
                self._close(task)
                if until_open is not None and len(self._open) <= until_open:
                    return

    def _close(self, task) -> None:
        saved, _ = self._open.pop(task)
        saved.__exit__(None, None, None)  # complete: the checkpoint is put in place

    def _setup_fetcher(self, ceiling: int) -> None:
        """The pool the scheduler starts requests on, and the fetch it runs there, as `download.fetcher` says."""
        retrying = dict(retry_throttled=False, may_retry=self._policy.may_retry)
        self._hook_threads = None
        self._fetcher = self._download.chosen_fetcher(in_process=False)  # "auto" left by a caller: async
        if self._fetcher == "async":
            # Imported here: aiohttp costs ~0.3 s of start-up, which runs with the thread fetcher need not pay.
            from pipeline.media.async_download import AsyncDownloader
            from pipeline.media.event_loop_pool import EventLoopPool

            self._downloader = AsyncDownloader(self._download, **retrying)
            self._pool = EventLoopPool("download-loop")
            self._fetch = self._polite_fetch_async
            if self._hooks.around_fetch:
                self._hook_threads = ThreadPoolExecutor(self._download.threads, thread_name_prefix="download-hooks")
        else:
            self._downloader = Downloader(self._download, **retrying)
            self._pool = ThreadPoolExecutor(max_workers=ceiling, thread_name_prefix="download")  # started lazily
            self._fetch = self._polite_fetch

    def _polite_fetch(self, sample: Sample) -> Sample | Reject | Callable[[], Sample | Reject]:
        """A row's fetch, telling its host's policy how the request went (or that none was sent) as soon as the
        response is in hand: the host's connection is free while the body waits for the CPU.  Returns the
        rest of the row (decode, resize) for the scheduler's decoding threads, or the row's reject."""
        row = _RowFetch(self, sample)
        try:
            return row.then(fetch_row(self._downloader, self._hooks, sample, row.response_arrived, row.hold))
        finally:
            row.end()

    async def _polite_fetch_async(self, sample: Sample) -> Sample | Reject | Callable[[], Sample | Reject]:
        """`_polite_fetch` on the event loop (`download.fetcher: async`)."""
        row = _RowFetch(self, sample)
        try:
            return row.then(await fetch_row_async(self._downloader, self._hooks, sample, row.response_arrived,
                                                  row.hold, self._hook_threads))
        finally:
            row.end()

    def _process(self, sample: Sample, fetched: FetchResult, hold: BodyHold, started: float,
                 answered: float) -> Sample | Reject:
        """The rest of a row, on a decoding thread.  The time since its response came counts as decode+resize
        (its wait for a decoding thread included), its CPU time for the progress line's contention."""
        cpu = time.thread_time()
        try:
            return process_row(self._resize, self._hooks, sample, fetched)
        finally:
            hold.release()  # decoded, resized and hashed: the body is no longer needed
            wall = time.monotonic() - answered
            self._times.add(network=answered - started, processing=wall)
            self._limit.row_processed(wall, time.thread_time() - cpu)

    def _status_fields(self) -> dict:
        network, processing = self._times.take()
        return {"in_flight": self._scheduler.in_flight, "decoding": self._scheduler.processing,
                "limit": self._limit.value,
                "network_s": round(network, 3), "processing_s": round(processing, 3),
                "cpu_cores": round(self._limit.cpu_cores, 2), "cpu_contention": round(self._limit.contention, 2),
                "bodies_held_bytes": self._budget.held}

    def _progress_detail(self) -> str:
        status = self._status.last  # the last few seconds
        if not status:
            return "no status yet"
        total = status["network_s"] + status["processing_s"] or 1.0
        return (f"{status['in_flight']} in flight (limit {status['limit']}), {status['decoding']} decoding, "
                f"row time {status['network_s'] / total:.0%} network / {status['processing_s'] / total:.0%} "
                f"decode+resize (taking {status['cpu_contention']:.1f}x its CPU time), "
                f"worker CPU {status['cpu_cores']:.2f} cores, "
                f"bodies held {status['bodies_held_bytes'] / 1e6:.0f} MB")

    def _reuse(self, record: Sample | Reject) -> Sample | Reject:
        """A checkpointed result, with the fields that this run's stages compute from images."""
        if isinstance(record, Sample):
            for stage in self._hooks.from_image:
                stage.fields_from_image(record)
        return record

    def _finished(self, result: Sample | Reject, task, saved) -> Sample | Reject:
        if isinstance(result, Reject):
            self._failed.inc()
        else:
            self._done.inc()
            ImageStore.put(result, task)  # its image can be read back from this task's checkpoint
        self._progress.tick()
        self._status.tick()
        return saved.add(result)

    def teardown(self):
        if self._fetcher == "async":
            self._pool.run(self._downloader.close())
        else:
            self._downloader.close()
        self._pool.shutdown(wait=True)
        self._decoders.shutdown(wait=True)
        if self._hook_threads is not None:
            self._hook_threads.shutdown(wait=True)


class _RowFetch:
    """One row's fetch as the download task sees it: when its response came (for the host's policy and the
    progress line), the hold on its body, and what is left of the row once the fetch is done."""

    def __init__(self, task: "_DownloadTask", sample: Sample):
        self._task, self._sample = task, sample
        self._started = time.monotonic()
        self._host = host_of(sample.url)
        self._answered: list[float] = []
        self.hold = task._budget.hold()
        self._rest = None  # the row's processing, which then releases the body's hold

    def response_arrived(self, result: FetchResult) -> None:
        self._answered.append(time.monotonic())
        if self._host:
            task = self._task
            task._policy.finish(self._host, result.reason, result.status, result.headers.get("retry-after"))
            task._count(self._host, requests=1, seconds=self._answered[0] - self._started,
                        throttled=int(result.status in THROTTLE_STATUSES))

    def then(self, fetched: FetchResult | Reject) -> Reject | Callable[[], Sample | Reject]:
        """The row's reject, or the rest of its work (decode, resize) for a decoding thread."""
        if isinstance(fetched, Reject):
            self._task._times.add(network=time.monotonic() - self._started, processing=0.0)
            return fetched
        self._rest = functools.partial(self._task._process, self._sample, fetched, self.hold, self._started,
                                       self._answered[0])
        return self._rest

    def end(self) -> None:
        """However the fetch ended: the hold given back unless the rest of the row has it, and the host's
        slot freed if no request was sent."""
        if self._rest is None:
            self.hold.release()
        if self._host and not self._answered:
            self._task._policy.release(self._host)


def _split_rejects(element):
    if isinstance(element, Reject):
        yield beam.pvalue.TaggedOutput(REJECTED, element)
    else:
        yield element


class DownloadImages(beam.PTransform):
    """Fetch (with the stages' download hooks), decode and resize.

    The (small, image-less) rows are grouped into tasks of
    `download.rows_per_task` consecutive rows of one shard: the unit of work
    and of checkpointing, as img2dataset's shards are.
    """

    def __init__(self, download: DownloadParams, resize: ResizeParams, stages: Iterable[Stage],
                 output: OutputParams, output_dir: str):
        super().__init__()
        self._download, self._resize, self._hooks = download, resize, DownloadHooks.of(stages)
        self._output, self._output_dir = output, output_dir

    def expand(self, samples):
        fetch = _DownloadTask(self._download, self._resize, self._hooks, self._output, self._output_dir,
                              uuid.uuid4().hex)
        output, rows_per_task = self._output, self._download.rows_per_task
        fetched = (
            samples
            | "KeyByTask" >> beam.Map(lambda s: (download_task(s, output, rows_per_task), s))
            | "GroupByTask" >> beam.GroupByKey()
            | "Fetch" >> beam.ParDo(fetch).with_outputs(HOST_TALLY, main="results")
        )
        split = fetched.results | "SplitFailures" >> beam.FlatMap(_split_rejects).with_outputs(REJECTED, main="samples")
        report = (
            fetched[HOST_TALLY]
            | "MergeHosts" >> beam.CombineGlobally(merge_host_tallies).without_defaults()
            | "HostReport" >> beam.Map(lambda tally: ("download", "hosts", host_report(tally)))
        )
        return {"samples": split.samples, REJECTED: split[REJECTED], "report": report}


class _Progress:
    """Logs how many samples a worker has handled, at most every 10 s, with `detail()` if given."""

    def __init__(self, what: str, every: float = 10.0, detail: Callable[[], str] | None = None):
        self._what, self._every, self._detail = what, every, detail
        self._count, self._start = 0, time.monotonic()
        self._last, self._count_at_last = self._start, 0
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if now - self._last >= self._every:
                recent = (self._count - self._count_at_last) / (now - self._last)
                self._last, self._count_at_last = now, self._count
                extra = f"; {self._detail()}" if self._detail else ""
                log.info("%s: %d samples on this worker (%.1f/s, %.1f/s lately)%s", self._what, self._count,
                         self._count / (now - self._start), recent, extra)


class _RowTimes:
    """Seconds the download threads spent waiting on the network vs decoding and resizing, since last taken."""

    def __init__(self):
        self._network = self._processing = 0.0
        self._lock = threading.Lock()

    def add(self, network: float, processing: float) -> None:
        with self._lock:
            self._network += network
            self._processing += processing

    def take(self) -> tuple[float, float]:
        with self._lock:
            taken = self._network, self._processing
            self._network = self._processing = 0.0
            return taken


def decoding_threads() -> int:
    """Threads a worker decodes and resizes on: Pillow releases the GIL while it decodes, resizes and
    encodes, so one per core keeps the cores busy; a few at most, since Beam runs a worker per core."""
    return min(4, max(2, os.cpu_count() or 1))


def in_flight_ceiling(download: DownloadParams) -> int:
    """The most requests a worker may have in flight: `max_in_flight`, never fewer than `threads`.
    Memory needs no cap here: each body reserves its own size in the worker's `BodyBudget`."""
    return max(download.threads, download.max_in_flight)
