"""Shared machinery for whole-dataset dedup stages.

Dedup runs in two shuffles so that images never travel to a hot key:
1. small records `(group_value, key)` are grouped, and each group names its
   losers `(loser_key, {"duplicate_of": winner_key, ...})`;
2. samples are joined with the losers by key, and losers leave as rejects.
The winner of a group is the smallest key: deterministic across runs, workers
and runners.
"""
from __future__ import annotations

from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.schema import Sample


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
