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
from dataclasses import dataclass
from typing import Callable, Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from pipeline.core import layout
from pipeline.core.stage import DownloadHook, Stage, StageContext
from pipeline.engine import checkpoint
from pipeline.engine.stored_images import ImageStore
from pipeline.media.download import Downloader, DownloadParams, FetchResult, url_has_credentials, without_credentials
from pipeline.media.host_scheduler import HostScheduler, InFlightLimit, shared_policy
from pipeline.media.politeness import THROTTLE_STATUSES, host_of, host_report, merge_host_tallies
from pipeline.media.imaging import ImageRejected, ResizeParams, process_image
from pipeline.core.records import REJECTED, Reject, Sample
from pipeline.engine.worker_status import WorkerStatus
from pipeline.engine.writers import OutputParams
from pipeline.media.body_budget import BodyBudget, BodyHold

HOST_TALLY = "host_tally"
log = logging.getLogger("curate")


# ---------------------------------------------------------------- download


@dataclass(frozen=True)
class DownloadHooks:
    """The stages that act in the download thread of each row, by the point where they act."""

    around_fetch: tuple[DownloadHook, ...] = ()  # before_download, then check_response
    from_image: tuple[Stage, ...] = ()  # fields_from_image

    @classmethod
    def of(cls, stages: Iterable[Stage]) -> "DownloadHooks":
        stages = list(stages)
        return cls(
            tuple(s for s in stages if isinstance(s, DownloadHook)),
            tuple(s for s in stages if s.needs().image_fields),
        )

    def stages(self) -> list[Stage]:
        unique = {id(s): s for s in self.around_fetch + self.from_image}
        return list(unique.values())


def fetch_and_resize(downloader: Downloader, resize: ResizeParams, hooks: DownloadHooks, sample: Sample,
                     on_fetch: Callable[[FetchResult], None] | None = None,
                     hold: BodyHold | None = None) -> Sample | Reject:
    """One row: the stages' before-download checks, fetch, their response checks, decode and resize,
    then the fields stages compute from the image while it is at hand (`fetch_row`, then `process_row`).

    `on_fetch` is told the fetch's result (for the per-host politeness), if a fetch happens.
    `hold` reserves the body's bytes in the worker's budget (pipeline.media.body_budget); the caller releases it.
    """
    fetched = fetch_row(downloader, hooks, sample, on_fetch, hold)
    return fetched if isinstance(fetched, Reject) else process_row(resize, hooks, sample, fetched)


def fetch_row(downloader: Downloader, hooks: DownloadHooks, sample: Sample,
              on_fetch: Callable[[FetchResult], None] | None = None,
              hold: BodyHold | None = None) -> FetchResult | Reject:
    """A row's network part: the stages' before-download checks and the fetch.

    Runs in a download thread, so a check that fetches (robots.txt) holds up only its own row."""
    if url_has_credentials(sample.url):  # before the hooks too: robots.txt would be fetched with them
        sample.url = without_credentials(sample.url)  # nor kept in the rejects
        return sample.reject("download", "url_has_credentials")
    for stage in hooks.around_fetch:
        verdict = stage.before_download(sample)
        if not verdict.keep:
            return sample.reject(stage.name, verdict.reason)
    result = downloader.fetch(sample.url, hold=hold)
    if on_fetch is not None:
        on_fetch(result)
    return sample.reject("download", result.reason) if result.reason else result


def process_row(resize: ResizeParams, hooks: DownloadHooks, sample: Sample, result: FetchResult) -> Sample | Reject:
    """A row's CPU part, once its response is in hand: the stages' response checks, decode and resize,
    then the fields stages compute from the image while it is at hand."""
    for stage in hooks.around_fetch:
        verdict = stage.check_response(sample, result)
        if not verdict.keep:
            return sample.reject(stage.name, verdict.reason)
    try:
        image = process_image(result.data, resize)
    except ImageRejected as err:
        return sample.reject("download", err.reason)
    sample.image, sample.image_format = image.data, image.format
    sample.width, sample.height = image.width, image.height
    sample.original_width, sample.original_height = image.original_width, image.original_height
    sample.sha256 = result.sha256
    for stage in hooks.from_image:
        stage.fields_from_image(sample, image.pixels)
    return sample


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
        self._downloader = Downloader(self._download, retry_throttled=False, may_retry=self._policy.may_retry)
        ceiling = in_flight_ceiling(self._download)
        self._limit = InFlightLimit(self._download.threads, ceiling)  # kept across bundles: it has learnt the CPU
        self._pool = ThreadPoolExecutor(max_workers=ceiling, thread_name_prefix="download")  # threads start lazily
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
        self._scheduler = HostScheduler(self._policy, self._pool, self._polite_fetch, self._limit,
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

    def _polite_fetch(self, sample: Sample) -> Sample | Reject | Callable[[], Sample | Reject]:
        """A row's fetch, telling its host's policy how the request went (or that none was sent) as soon as the
        response is in hand: the host's connection is free while the body waits for the CPU.  Returns the
        rest of the row (decode, resize) for the scheduler's decoding threads, or the row's reject."""
        started = time.monotonic()
        host = host_of(sample.url)
        answered: list[float] = []

        def response_arrived(result: FetchResult) -> None:
            answered.append(time.monotonic())
            if host:
                self._policy.finish(host, result.reason, result.status, result.headers.get("retry-after"))
                self._count(host, requests=1, seconds=answered[0] - started,
                            throttled=int(result.status in THROTTLE_STATUSES))

        hold = self._budget.hold()
        rest = None  # the row's processing, which then releases the body's hold
        try:
            fetched = fetch_row(self._downloader, self._hooks, sample, response_arrived, hold)
            if isinstance(fetched, Reject):
                self._times.add(network=time.monotonic() - started, processing=0.0)
                return fetched
            rest = functools.partial(self._process, sample, fetched, hold, started, answered[0])
            return rest
        finally:
            if rest is None:
                hold.release()
            if host and not answered:
                self._policy.release(host)

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
        self._pool.shutdown(wait=True)
        self._decoders.shutdown(wait=True)
        self._downloader.close()


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
