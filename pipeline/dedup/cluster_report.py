"""The clusters' report (audit.json's `dedup` section), folded from facts with bounded state.

The Beam transforms emit facts ("candidates" | "cluster" | "hot_fingerprint" |
"hot_band" | "pairs" | "unresolved"); `ClusterReport` combines them into one
dict: counts, a histogram of cluster sizes, the largest clusters with example
duplicates, and the hot fingerprints and band keys that were collapsed or
sub-bucketed.
"""
from __future__ import annotations

import heapq

import apache_beam as beam

from pipeline.dedup.bands import BandKey

HISTOGRAM_LIMITS = (2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
LARGEST_CLUSTERS = 10
EXAMPLE_KEYS = 5
LISTED_HOT_KEYS = 10


def size_bucket(size: int) -> str:
    low = 2
    for limit in HISTOGRAM_LIMITS:
        if size <= limit:
            return str(low) if low == limit else f"{low}-{limit}"
        low = limit + 1
    return f">{HISTOGRAM_LIMITS[-1]}"


def describe_band_key(band_key: BandKey) -> str:
    index, value = band_key
    text = value.hex() if isinstance(value, bytes) else "-".join(f"{v:x}" for v in value)
    return f"{index}:{text[:32]}"


class ClusterSizeFn(beam.CombineFn):
    """Per winner: number of losers and the smallest few loser keys (bounded state)."""

    def create_accumulator(self):
        return 0, []

    def add_input(self, accumulator, loser_key):
        count, examples = accumulator
        return count + 1, sorted({*examples, loser_key})[:EXAMPLE_KEYS]

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        examples = sorted({k for _, keys in accumulators for k in keys})[:EXAMPLE_KEYS]
        return sum(count for count, _ in accumulators), examples

    def extract_output(self, accumulator):
        return accumulator


class DedupReportFn(beam.CombineFn):
    """Folds facts ("candidates" | "cluster" | "hot_fingerprint" | "hot_band" |
    "pairs" | "unresolved", ...) into the report dict, with bounded state."""

    def create_accumulator(self):
        return {
            "candidates": 0, "clusters": 0, "dropped": 0, "histogram": {}, "largest": [],
            "pairs_compared": 0, "unresolved": 0, "hot_fingerprints": [], "hot_fingerprint_count": 0,
            "hot_band_keys": [], "hot_band_key_count": 0,
        }

    def add_input(self, acc, fact):
        kind = fact[0]
        if kind == "candidates":
            acc["candidates"] += fact[1]
        elif kind == "cluster":
            _, winner, size, examples = fact
            acc["clusters"] += 1
            acc["dropped"] += size - 1
            bucket = size_bucket(size)
            acc["histogram"][bucket] = acc["histogram"].get(bucket, 0) + 1
            acc["largest"] = _top(acc["largest"], [(size, winner, examples)], LARGEST_CLUSTERS)
        elif kind == "pairs":
            acc["pairs_compared"] += fact[1]
        elif kind == "unresolved":
            acc["unresolved"] += fact[1]
        elif kind == "hot_fingerprint":
            acc["hot_fingerprint_count"] += 1
            acc["hot_fingerprints"] = _top(acc["hot_fingerprints"], [fact[1:]], LISTED_HOT_KEYS)
        elif kind == "hot_band":
            acc["hot_band_key_count"] += 1
            acc["hot_band_keys"] = _top(acc["hot_band_keys"], [fact[1:]], LISTED_HOT_KEYS)
        else:
            raise ValueError(f"unknown report fact {kind!r}")
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        merged = self.create_accumulator()
        for acc in accumulators:
            for name in ("candidates", "clusters", "dropped", "pairs_compared", "unresolved",
                         "hot_fingerprint_count", "hot_band_key_count"):
                merged[name] += acc[name]
            for bucket, count in acc["histogram"].items():
                merged["histogram"][bucket] = merged["histogram"].get(bucket, 0) + count
        for name, limit in (("largest", LARGEST_CLUSTERS), ("hot_fingerprints", LISTED_HOT_KEYS),
                            ("hot_band_keys", LISTED_HOT_KEYS)):
            merged[name] = _top([], [item for acc in accumulators for item in acc[name]], limit)
        return merged

    def extract_output(self, acc):
        order = {bucket: i for i, bucket in enumerate(size_bucket(s) for s in (*HISTOGRAM_LIMITS, 10**9))}
        return {
            "candidates": acc["candidates"],
            "clusters": acc["clusters"],
            "dropped": acc["dropped"],
            "cluster_size_histogram": dict(sorted(acc["histogram"].items(), key=lambda kv: order[kv[0]])),
            "largest_clusters": [
                {"size": size, "kept": winner, "example_duplicates": list(examples)}
                for size, winner, examples in acc["largest"]
            ],
            "pairs_compared": acc["pairs_compared"],
            "unresolved": acc["unresolved"],
            "hot_fingerprints": {
                "count": acc["hot_fingerprint_count"],
                "largest": [{"fingerprint": fp, "samples": n, "kept": kept} for n, fp, kept in acc["hot_fingerprints"]],
            },
            "hot_band_keys": {
                "count": acc["hot_band_key_count"],
                "largest": [{"band_key": k, "samples": n, "sub_buckets": s} for n, k, s in acc["hot_band_keys"]],
            },
        }


def _top(current: list, new: list, limit: int) -> list:
    """The `limit` largest items by (first field descending, rest ascending): deterministic."""
    return heapq.nsmallest(limit, [tuple(x) for x in (*current, *new)], key=lambda item: (-item[0], item[1:]))


class ClusterReport(beam.PTransform):
    """Facts -> one report dict (always exactly one, also for empty input)."""

    def __init__(self, settings: dict):
        super().__init__()
        self._settings = settings

    def expand(self, facts):
        settings = self._settings
        return (
            facts
            | "Combine" >> beam.CombineGlobally(DedupReportFn())
            | "AddSettings" >> beam.Map(lambda report: {"settings": settings, **report})
        )

