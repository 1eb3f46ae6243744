"""Shared machinery for whole-dataset dedup stages.

Dedup runs in two shuffles so that images never travel to a hot key:
1. small records `(group_value, key)` are grouped, and each group names its
   losers `(loser_key, {"duplicate_of": winner_key, ...})`;
2. samples are joined with the losers by key, and losers leave as rejects.
The winner of a group is the smallest key: deterministic across runs, workers
and runners.
"""
from __future__ import annotations

import math
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.core.params import ParamError
from pipeline.core.records import Sample


def losers_of_group(group: tuple[str, Iterable[str]]) -> Iterable[tuple[str, dict]]:
    """For one group of equal values, every key but the smallest loses to it."""
    _value, keys = group
    winner, *losers = sorted(set(keys))
    for loser in losers:
        yield loser, {"duplicate_of": winner}


class DropLosers(beam.PTransform):
    """Samples joined with `(loser_key, info)`: {"kept": samples, "rejected": rejects}."""

    def __init__(self, stage: str, reason: str, losers: beam.PCollection):
        super().__init__()
        self._stage, self._reason, self._losers = stage, reason, losers

    def expand(self, samples):
        stage, reason = self._stage, self._reason
        kept_counter = Metrics.counter(stage, "kept")
        dropped_counter = Metrics.counter(stage, "dropped")

        def split(joined):
            _key, grouped = joined
            infos = list(grouped["losers"])
            for sample in grouped["samples"]:
                if infos:
                    # A sample may lose in several groups; name one winner, deterministically.
                    sample.fields.update(min(infos, key=lambda info: info["duplicate_of"]))
                    dropped_counter.inc()
                    yield beam.pvalue.TaggedOutput("rejected", sample.reject(stage, reason))
                else:
                    kept_counter.inc()
                    yield sample

        keyed = samples | "KeyByKey" >> beam.Map(lambda s: (s.key, s))
        outputs = (
            {"samples": keyed, "losers": self._losers}
            | "JoinLosers" >> beam.CoGroupByKey()
            | "Split" >> beam.FlatMap(split).with_outputs("rejected", main="kept")
        )
        return {"kept": outputs.kept, "rejected": outputs.rejected}


# Which sample of a near-duplicate cluster survives.  "first": the smallest
# key (earliest input row); "largest": most original pixels; "clip_score":
# highest fields["clip_score"] (samples without one rank last).  Ties always
# go to the smaller key.
KEEP_POLICIES = ("first", "largest", "clip_score")


def keep_rank(sample: Sample, policy: str) -> tuple[float, str]:
    """Sort key of a sample under a keep policy: the smallest rank is kept."""
    if policy == "first":
        rank = 0.0
    elif policy == "largest":
        rank = -float((sample.original_width or 0) * (sample.original_height or 0))
    elif policy == "clip_score":
        score = sample.fields.get("clip_score")
        finite = isinstance(score, (int, float)) and math.isfinite(score)
        rank = -float(score) if finite else math.inf
    else:
        raise ValueError(f"unknown keep policy {policy!r}; expected one of {', '.join(KEEP_POLICIES)}")
    return rank + 0.0, sample.key  # + 0.0 turns -0.0 into 0.0: equal ranks encode equally


def check_range(where: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ParamError(f"{where} must be within {low}-{high}, got {value}")
