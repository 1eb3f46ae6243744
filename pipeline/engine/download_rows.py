"""One row of a download, from its URL to its resized image: the steps a download task runs per row.

`fetch_row` (or `fetch_row_async`, on the event-loop fetcher) is the network
part, the stages' before-download checks and the fetch; `process_row` the CPU
part, the stages' response checks, decode and resize, and the fields stages
compute from the image.  The download task (pipeline.engine.download_images)
runs the first on its request threads or event loop, the second on its
decoding threads.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from pipeline.core.records import Reject, Sample
from pipeline.core.stage import DownloadHook, Stage
from pipeline.media.body_budget import BodyHold
from pipeline.media.download import Downloader, FetchResult, url_has_credentials, without_credentials
from pipeline.media.imaging import ImageRejected, ResizeParams, process_image

if TYPE_CHECKING:  # importing aiohttp costs ~0.3 s of start-up: only runs with `download.fetcher: async` pay it
    from pipeline.media.async_download import AsyncDownloader


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
    refused = refused_before_fetch(hooks, sample)
    if refused is not None:
        return refused
    return _fetched(sample, downloader.fetch(sample.url, hold=hold), on_fetch)


async def fetch_row_async(downloader: "AsyncDownloader", hooks: DownloadHooks, sample: Sample,
                          on_fetch: Callable[[FetchResult], None] | None = None, hold: BodyHold | None = None,
                          hook_threads: Executor | None = None) -> FetchResult | Reject:
    """`fetch_row` on the event loop.  A stage's check may block (a robots.txt not yet fetched, with the
    thread fetcher): unless every stage says it will answer at once, the checks run on `hook_threads`,
    never on the loop."""
    if all(stage.answers_at_once(sample) for stage in hooks.around_fetch):
        refused = refused_before_fetch(hooks, sample)
    else:
        refused = await asyncio.get_running_loop().run_in_executor(hook_threads, refused_before_fetch, hooks, sample)
    if refused is not None:
        return refused
    return _fetched(sample, await downloader.fetch(sample.url, hold=hold), on_fetch)


def refused_before_fetch(hooks: DownloadHooks, sample: Sample) -> Reject | None:
    """The row's reject if its URL carries credentials or a stage's before-download check drops it."""
    if url_has_credentials(sample.url):  # before the hooks too: robots.txt would be fetched with them
        sample.url = without_credentials(sample.url)  # nor kept in the rejects
        return sample.reject("download", "url_has_credentials")
    for stage in hooks.around_fetch:
        verdict = stage.before_download(sample)
        if not verdict.keep:
            return sample.reject(stage.name, verdict.reason)
    return None


def _fetched(sample: Sample, result: FetchResult, on_fetch: Callable[[FetchResult], None] | None):
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
