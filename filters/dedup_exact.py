"""Exact-duplicate removal across the whole dataset by content hash.

The hash is the sha256 of the bytes as downloaded (before decode and
re-encode): identical files are duplicates, and the hash is cheap and
independent of resize settings.  Re-encoded copies of one picture are the
perceptual-hash stage's job.
"""
from __future__ import annotations

import apache_beam as beam

from pipeline.core.stage import DatasetStage
from pipeline.dedup.groups import DropLosers, losers_of_group
from pipeline.core.registry import register


@register
class ExactDedup(DatasetStage):
    name = "dedup_exact"

    def transform(self):
        return _ExactDedup(self.name)


class _ExactDedup(beam.PTransform):
    def __init__(self, stage: str):
        super().__init__()
        self._stage = stage

    def expand(self, samples):
        losers = (
            samples
            | "HashAndKey" >> beam.Map(lambda s: (s.sha256, s.key))
            | "GroupByHash" >> beam.GroupByKey()
            | "NameLosers" >> beam.FlatMap(losers_of_group)
        )
        return samples | "DropDuplicates" >> DropLosers(self._stage, "duplicate", losers)
