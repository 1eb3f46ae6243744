"""The stage interface every filter implements.

Two kinds of stage:

* `SampleStage` decides about one sample at a time.  `score(batch)` may add
  fields to samples (scores, labels) and `keep(sample)` applies thresholds, so a
  user can re-threshold later from the written scores.  `setup()` loads models
  once per worker.  Stages with `uses_model = True` are run through Beam's
  `RunInference`, which batches and shares one loaded instance per process.
* `DatasetStage` needs the whole dataset (deduplication): it provides a Beam
  `PTransform` from samples to a `{"kept": ..., "rejected": ...}` pair.

Neither kind knows about readers, writers or the runner.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from pipeline.schema import KEEP, Sample, Verdict


@dataclasses.dataclass(frozen=True)
class NoParams:
    pass


class Stage:
    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    # False for stages that only look at url and caption: they run before the
    # download, so rows they drop are never fetched.
    needs_image: ClassVar[bool] = True
    # False for image stages that read only sizes and fields, never pixels:
    # after a whole-dataset stage the pipeline then need not read the image
    # bytes back for them (pipeline.stored_images).
    uses_pixels: ClassVar[bool] = True
    # True for stages that derive small fields from the pixels (a perceptual
    # hash): `fields_from_image(sample, pixels)` then runs in the download
    # thread of every row, right after decode and resize, whatever the stage's
    # place in the recipe, so the stage itself needs no pixels later.  It must
    # not raise for a bad image: leave the fields out, and let the stage decide.
    computes_from_image: ClassVar[bool] = False
    # False for stages that never drop a sample: they add fields (labels,
    # scores) or change the image or caption.  A stage whose `action`
    # parameter is not "drop" (tag, redact) never drops either.
    drops: ClassVar[bool] = True

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    @property
    def label_only(self) -> bool:
        """True when this instance, with its parameters, never drops a sample."""
        return not self.drops or getattr(self.params, "action", "drop") != "drop"

    @property
    def kind(self) -> str:
        """Where this instance runs, as `curate stages` shows it.

        An instance attribute may differ from the class's: some stages need
        the image only with some parameters.
        """
        return "after download" if self.needs_image else "before download"

    def setup(self) -> None:
        """Load models or tables; called once per worker before any sample."""

    def fields_from_image(self, sample: Sample, pixels: Any = None) -> None:
        """Add fields computed from the image (see `computes_from_image`).

        `pixels` is the decoded output image (PIL) when the download has it,
        else None: decode `sample.image`.
        """

    def npz_arrays(self) -> dict[str, str]:
        """Fields holding embeddings that go to the `.npz` beside each shard, and their array names
        (pipeline.embedding_files); {}: every field stays in the Parquet."""
        return {}

    def check(self) -> None:
        """Cheap pre-flight check run before the pipeline starts (e.g. model files exist).

        Raise ValueError or FileNotFoundError with a message for the user.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


class SampleStage(Stage):
    uses_model: ClassVar[bool] = False
    # Hooks for stages that must act around the download (e.g. opt-out signals).
    # Whatever the stage's place in the recipe, both run in the download
    # thread of each row, after setup(): `before_download` just before the
    # row's image is fetched, `check_response` on the raw response (headers
    # and original bytes) before decoding.
    checks_before_download: ClassVar[bool] = False
    checks_response: ClassVar[bool] = False
    # The recipe's download settings (user agent, SSRF guard), for stages that
    # fetch something themselves (robots.txt), and its resize settings, for
    # stages that map coordinates or re-encode images: set by the pipeline.
    download_params: Any = None
    resize_params: Any = None

    def score(self, batch: list[Sample]) -> None:
        """Add fields to each sample of the batch (default: one at a time)."""
        for sample in batch:
            self.score_one(sample)

    def score_one(self, sample: Sample) -> None:
        """Add fields to one sample."""

    def keep(self, sample: Sample) -> Verdict:
        return KEEP

    def before_download(self, sample: Sample) -> Verdict:
        return KEEP

    def check_response(self, sample: Sample, response: Any) -> Verdict:
        """`response` is a pipeline.download.FetchResult (url, final_url, status, headers, data)."""
        return KEEP


class DatasetStage(Stage):
    # Section of report/audit.json that this stage's "report" output goes under.
    report_section: ClassVar[str] = "stages"

    @property
    def kind(self) -> str:
        return "whole dataset, after download" if self.needs_image else "whole dataset, before download"

    def transform(self):
        """A PTransform: PCollection[Sample] -> {"kept": PCollection[Sample], "rejected": PCollection[Reject]}.

        It may add "report": a PCollection holding one JSON-friendly dict (e.g.
        cluster statistics), written to audit.json under
        `[report_section][stage name]`.
        """
        raise NotImplementedError
