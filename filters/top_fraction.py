"""Keep the top fraction of the dataset by a score field (DataComp's "CLIP score top 30%").

A per-sample threshold cannot express "the best 30%": the cut-off depends on
every score in the dataset, so this is a dataset stage.  It computes the
global cut-off once (a combine over the scores alone; the samples with their
images are never shuffled) and splits the samples against it as a side input.

The cut-off is the k-th largest score with k = ceil(fraction * n), n the number
of samples that have a score, and a sample is kept when its score is at least
the cut-off.  Ties at the cut-off are all kept, so the result never depends on
the order or sharding of the input, and may hold slightly more than k samples.

`method`:
* `exact` collects every score (8 bytes per sample, on one worker): exact, and
  fine up to a few hundred million samples.
* `approximate` uses Beam's ApproximateQuantiles with 1000 quantile intervals:
  constant memory, cut-off within about 0.1% of n in rank.

Samples whose field is missing, None, NaN or not a number cannot be ranked and
are dropped as `missing_score` (they do not count in n).
"""
from __future__ import annotations

import array
import math
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import apache_beam as beam

from pipeline.core.stage import DatasetStage
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import REJECTED, Sample

QUANTILE_INTERVALS = 1000
KEPT = "kept"


@register
class TopFraction(DatasetStage):
    name = "top_fraction"

    @dataclass(frozen=True)
    class Params:
        field: str = "clip_score"  # the score field an earlier stage wrote
        fraction: float = 0.3  # share of the dataset kept, highest scores first
        method: Literal["exact", "approximate"] = "exact"  # approximate: constant memory, cut-off within ~0.1% in rank

    def __init__(self, params: Any = None):
        super().__init__(params)
        if not 0.0 < self.params.fraction <= 1.0:
            raise ParamError(f"{self.name}.fraction: {self.params.fraction} is not in (0, 1]")

    def transform(self) -> beam.PTransform:
        return _KeepTopFraction(self.name, self.params.field, self.params.fraction, self.params.method)


class _KeepTopFraction(beam.PTransform):
    def __init__(self, stage: str, field: str, fraction: float, method: str):
        super().__init__()
        self.stage = stage
        self.field = field
        self.fraction = fraction
        self.method = method

    def expand(self, samples):
        scores = samples | "Scores" >> beam.FlatMap(_rankable_score, self.field)
        if self.method == "exact":
            cutoff = scores | "ExactCutoff" >> beam.CombineGlobally(KthLargest(self.fraction))
        else:
            cutoff = (
                scores
                | "Quantiles" >> beam.ApproximateQuantiles.Globally(QUANTILE_INTERVALS + 1)
                | "ApproximateCutoff" >> beam.Map(cutoff_from_quantiles, self.fraction)
            )
        split = samples | "Split" >> beam.ParDo(
            _SplitAtCutoff(self.stage, self.field), beam.pvalue.AsSingleton(cutoff)
        ).with_outputs(REJECTED, main=KEPT)
        return {KEPT: split[KEPT], REJECTED: split[REJECTED]}


def score_of(sample: Sample, field: str) -> float | None:
    value = sample.fields.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _rankable_score(sample: Sample, field: str) -> Iterable[float]:
    score = score_of(sample, field)
    return [] if score is None else [score]


def rank_to_keep(fraction: float, count: int) -> int:
    """k: how many of `count` scores the cut-off must let through (at least one)."""
    return max(1, math.ceil(fraction * count - 1e-9))


class KthLargest(beam.CombineFn):
    """The exact cut-off: the k-th largest of all scores (None when there are none)."""

    def __init__(self, fraction: float):
        self.fraction = fraction

    def create_accumulator(self) -> array.array:
        return array.array("d")

    def add_input(self, scores: array.array, score: float) -> array.array:
        scores.append(score)
        return scores

    def merge_accumulators(self, accumulators: Iterable[array.array]) -> array.array:
        merged = array.array("d")
        for scores in accumulators:
            merged.extend(scores)
        return merged

    def extract_output(self, scores: array.array) -> float | None:
        import numpy as np

        if not scores:
            return None
        values = np.frombuffer(scores, dtype=np.float64)
        k = rank_to_keep(self.fraction, len(values))
        return float(np.partition(values, len(values) - k)[len(values) - k])


def cutoff_from_quantiles(quantiles: list[float], fraction: float) -> float | None:
    """The quantile below which (1 - fraction) of the scores lie; quantiles run min..max."""
    if not quantiles:
        return None
    intervals = len(quantiles) - 1
    return quantiles[round((1.0 - fraction) * intervals)]


class _SplitAtCutoff(beam.DoFn):
    def __init__(self, stage: str, field: str):
        self.stage = stage
        self.field = field

    def process(self, sample: Sample, cutoff: float | None):
        score = score_of(sample, self.field)
        if score is None:
            yield beam.pvalue.TaggedOutput(REJECTED, sample.reject(self.stage, "missing_score"))
        elif cutoff is None or score >= cutoff:
            yield sample
        else:
            yield beam.pvalue.TaggedOutput(REJECTED, sample.reject(self.stage, "below_top_fraction"))
