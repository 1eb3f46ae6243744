"""The stage interface every stage in `filters/` implements.

A stage's kind is its type:

* `Filter` decides about one sample at a time: `score(batch)` may add fields
  (scores, labels) and `keep(sample)` applies thresholds, so a user can
  re-threshold later from the written scores.
* `Mapper` changes samples one at a time (blurs faces, rewrites captions, adds
  labels) and never drops one.
* `DatasetStage` needs the whole dataset (deduplication, balancing): it
  provides a Beam `PTransform` from samples to `{"kept", "rejected"}`.

Two optional protocols, mixed in by the stages that need them, act in the
download thread of every row whatever the stage's place in the recipe:

* `DownloadHook`: `before_download(sample)` just before the row's image is
  fetched, `check_response(sample, response)` on the raw response;
* `ImageFields`: `fields_from_image(sample, pixels)` right after decode and
  resize, for small fields derived from the pixels (a perceptual hash).

What a stage needs from the pipeline (the image? its pixels? a model?) is
answered by the instance, `stage.needs()`, since parameters may change it; the
planner and `curate stages` both ask it.  A stage gets the recipe's download
and resize settings through `setup(context)`, once per worker.

No stage knows about readers, writers or the runner.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from pipeline.core.records import KEEP, Sample, Verdict


@dataclasses.dataclass(frozen=True)
class NoParams:
    pass


@dataclasses.dataclass(frozen=True)
class Needs:
    """What one configured stage needs from the pipeline."""

    # False: the stage looks only at url and caption, so it runs before the
    # download and the rows it drops are never fetched.
    image: bool = True
    # False: an image stage that reads only sizes and fields, never pixels, so
    # after a whole-dataset stage the image bytes need not be read back for it
    # (pipeline.engine.stored_images).
    pixels: bool = True
    # True: batched through Beam's RunInference, one loaded instance per process.
    model: bool = False
    # True: `fields_from_image` runs in the download thread of every row.
    image_fields: bool = False


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What the pipeline hands a stage at setup: the recipe's settings."""

    download: Any = None  # pipeline.media.download.DownloadParams: user agent, SSRF guard, deadlines
    resize: Any = None  # pipeline.media.imaging.ResizeParams: for stages that map coordinates or re-encode


class Stage:
    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    NEEDS: ClassVar[Needs] = Needs()  # the stage's needs with its default parameters
    kind_name: ClassVar[str] = "stage"

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()
        self.context = StageContext()

    def needs(self) -> Needs:
        """What this instance, with its parameters, needs (override when parameters change it)."""
        return self.NEEDS

    @property
    def label_only(self) -> bool:
        """True when this instance, with its parameters, never drops a sample."""
        return getattr(self.params, "action", "drop") != "drop"

    @property
    def kind(self) -> str:
        """What the stage is and where it runs, as `curate stages` shows it."""
        return f"{self.kind_name}, {'after' if self.needs().image else 'before'} download"

    def setup(self, context: StageContext | None = None) -> None:
        """Load models or tables; called once per worker before any sample.

        Stages that override it call `super().setup(context)` first."""
        if context is not None:
            self.context = context

    def npz_arrays(self) -> dict[str, str]:
        """Fields holding embeddings that go to the `.npz` beside each shard, and their array names
        (pipeline.engine.embedding_files); {}: every field stays in the Parquet."""
        return {}

    def check(self) -> None:
        """Cheap pre-flight check run before the pipeline starts (e.g. model files exist).

        Raise ValueError or FileNotFoundError with a message for the user.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


class SampleStage(Stage):
    """A stage that looks at one sample at a time: a `Filter` or a `Mapper`."""

    def score(self, batch: list[Sample]) -> None:
        """Add fields to each sample of the batch (default: one at a time)."""
        for sample in batch:
            self.score_one(sample)

    def score_one(self, sample: Sample) -> None:
        """Add fields to one sample."""

    def keep(self, sample: Sample) -> Verdict:
        return KEEP


class Filter(SampleStage):
    """Keeps or drops each sample (`keep`), after scoring it (`score`)."""

    kind_name = "filter"


class Mapper(SampleStage):
    """Changes or labels each sample (`score`/`score_one`); never drops one."""

    kind_name = "mapper"

    @property
    def label_only(self) -> bool:
        return True

    def keep(self, sample: Sample) -> Verdict:
        return KEEP


class DatasetStage(Stage):
    """Decides over the whole dataset (a shuffle): `transform()`."""

    kind_name = "whole dataset"
    # Section of report/audit.json that this stage's "report" output goes under.
    report_section: ClassVar[str] = "stages"

    def transform(self):
        """A PTransform: PCollection[Sample] -> {"kept": PCollection[Sample], "rejected": PCollection[Reject]}.

        It may add "report": a PCollection holding one JSON-friendly dict (e.g.
        cluster statistics), written to audit.json under
        `[report_section][stage name]`.
        """
        raise NotImplementedError


class DownloadHook:
    """Mixed into a stage that must act around the download of each row (opt-out signals, hash lists).

    Both run in the download step of each row, after setup(), whatever the
    stage's place in the recipe: `before_download` before the row's request
    (on the event loop when `answers_at_once` says it will not block, else on
    a thread), `check_response` in a decoding thread (the worker's decoding
    threads take the bodies in turn), so a hook keeps no per-thread state
    between the two."""

    def before_download(self, sample: Sample) -> Verdict:
        """Just before the row's image is fetched."""
        return KEEP

    def answers_at_once(self, sample: Sample) -> bool:
        """True if `before_download(sample)` will neither fetch nor wait (e.g. what it needs is cached).
        The event-loop fetcher then calls it on the loop; otherwise on a thread, so that it blocks only
        its own row.  A hook that does not override `before_download` always answers at once."""
        return type(self).before_download is DownloadHook.before_download

    def check_response(self, sample: Sample, response: Any) -> Verdict:
        """`response` is a pipeline.media.download.FetchResult (url, final_url, status, headers, data), before decoding."""
        return KEEP


class ImageFields:
    """Mixed into a stage that derives small fields from the pixels in the download thread.

    Set `image_fields` in the stage's `Needs`; the pipeline then calls
    `fields_from_image` on every row right after decode and resize, so the stage
    itself needs no pixels later.  It must not raise for a bad image: leave the
    fields out, and let the stage decide."""

    def fields_from_image(self, sample: Sample, pixels: Any = None) -> None:
        """`pixels` is the decoded output image (PIL) when the download has it, else None: decode `sample.image`."""
