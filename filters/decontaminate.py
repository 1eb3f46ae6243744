"""Remove images that (nearly) appear in an evaluation set.

A `SampleStage`, not a shuffle: the evaluation set is small next to the
dataset (thousands to ~1e5 images), so every worker loads its hashes once in
`setup()` and compares each sample against all of them (vectorised: ~1 ms per
sample for 100k eval images).  The comparison is dedup_image's test
(`pipeline.dedup.image_signatures.near_matrix`): pHash within `max_distance`
bits, and for low-detail images (few pHash bits set) the 2x2 colour grid must
agree as well.  A match is rejected with reason
`eval_overlap`; `fields["eval_match"]` names the eval image (file path
relative to the folder, or the Parquet `name` column, else its row number)
and `fields["eval_distance"]` the Hamming distance.  Counts land in the
audit's `rejected_by_stage`.

`eval_set` is either
* a folder of images: every readable image under it is hashed in `setup()`,
  after the same resize the pipeline applies (`image_size`, `resize_mode`:
  set them to the recipe's `resize:` values, since `border` padding changes
  the hash).  Each worker hashes the folder once; for large sets index it
  once instead:  curate eval-index FOLDER OUT.parquet
* a Parquet file with a `phash` column (16 hex digits), optional
  `colour_grid` (24 hex digits; without it low-detail images match on the
  hash alone) and optional `name`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.core.stage import Filter, StageContext
from pipeline.dedup.groups import check_range
from pipeline.dedup.eval_set import check_eval_set, load_eval_set
from pipeline.dedup.image_signatures import SignatureArrays, UnreadableImage, sample_signature
from pipeline.core.registry import register
from pipeline.core.records import KEEP, Sample, Verdict, drop


@register
class Decontaminate(Filter):
    name = "decontaminate"

    @dataclass(frozen=True)
    class Params:
        eval_set: str = ""  # folder of images, or Parquet with a phash column
        max_distance: int = 6  # pHash bits
        image_size: int = 256  # for a folder: the recipe's resize.image_size ...
        resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = "border"  # ... and resize_mode

        def __post_init__(self) -> None:
            check_range("decontaminate.max_distance", self.max_distance, 0, 31)
            check_range("decontaminate.image_size", self.image_size, 1, 65536)

    def check(self) -> None:
        check_eval_set(self.params.eval_set)

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        p = self.params
        self._eval = load_eval_set(p.eval_set, p.image_size, p.resize_mode)

    def score_one(self, sample: Sample) -> None:
        try:
            signature = sample_signature(sample, "none")
        except UnreadableImage:
            return  # no phash field: keep() drops it
        match = self._eval.nearest(SignatureArrays.of([signature.payload()]), self.params.max_distance)
        if match is not None:
            sample.fields["eval_match"], sample.fields["eval_distance"] = match

    def keep(self, sample: Sample) -> Verdict:
        if "phash" not in sample.fields:
            return drop("unreadable_image")
        if "eval_match" in sample.fields:
            return drop("eval_overlap")
        return KEEP
