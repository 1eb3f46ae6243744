"""The `dedup_image` shuffles at 100k samples on the local runner: time, memory, shuffle bytes.

Synthetic signatures (no images: the stage reuses `fields["phash"]` and
`fields["colour_grid"]`, so only the dedup shuffles run):
* unique random hashes (most of the set),
* planted near-duplicate clusters of 2-10 copies, each copy within
  `max_distance` bits of its cluster's first hash,
* one hot fingerprint: many identical blank images,
* low-detail hashes (few bits set) with assorted colours: they pile up in
  the all-zero band values and exercise the hot-band sub-buckets.

Reported: wall time, peak RSS of this process (the in-process runner runs
the workers here too), what the stage's report says, and the bytes per input
sample that cross the dedup GroupByKeys, estimated by pickling the records
that go into each (Beam's coders are a little more compact; the combiner
shuffles are pre-combined per bundle, so their figure is an upper bound).
The join that drops losers moves the samples themselves (with their image)
and is listed apart.

    python benchmarks/dedup_scale.py --samples 100000
"""
from __future__ import annotations

import argparse
import glob
import json
import pickle
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.dedup_image import ImageDedup  # noqa: E402
from pipeline.dedup.bands import band_records  # noqa: E402
from pipeline.dedup.clustering import (  # noqa: E402
    both_directions,
    cluster_in_memory,
    group_edges,
    group_pairs,
    large_star,
    small_star,
)
from pipeline.dedup.image_signatures import HASH_BITS  # noqa: E402
from pipeline.core.records import Sample  # noqa: E402


def synthetic_signatures(count: int, max_distance: int, seed: int) -> list[tuple[int, bytes]]:
    """(phash, colour grid) per sample, shuffled: unique, clustered, blank and low-detail hashes."""
    rng = np.random.default_rng(seed)
    blank = count // 20
    low_detail = count // 20
    signatures = [(0x8000000000000000, b"\xff" * 12)] * blank
    for _ in range(low_detail):
        bits = rng.choice(HASH_BITS, size=int(rng.integers(1, 5)), replace=False)
        signatures.append((sum(1 << int(b) for b in bits), rng.integers(0, 256, 12, dtype=np.uint8).tobytes()))
    clustered_target = count // 5
    while len(signatures) < blank + low_detail + clustered_target:
        base = int(rng.integers(0, 2**63)) << 1 | int(rng.integers(0, 2))
        grid = rng.integers(0, 256, 12, dtype=np.uint8).tobytes()
        for _ in range(int(rng.integers(2, 11))):
            flips = rng.choice(HASH_BITS, size=int(rng.integers(0, max_distance + 1)), replace=False)
            signatures.append((base ^ sum(1 << int(b) for b in flips), grid))
    while len(signatures) < count:
        signatures.append((int(rng.integers(0, 2**63)) << 1 | int(rng.integers(0, 2)),
                           rng.integers(0, 256, 12, dtype=np.uint8).tobytes()))
    signatures = signatures[:count]
    order = rng.permutation(len(signatures))
    return [signatures[i] for i in order]


def samples_of(signatures: list[tuple[int, bytes]], start: int = 0) -> list[Sample]:
    return [
        Sample(key=f"{i:09d}", shard_id=i // 10_000, url="", fields={"phash": f"{h:016x}", "colour_grid": g.hex()})
        for i, (h, g) in enumerate(signatures, start)
    ]


def _read_slice(path: str, start: int, stop: int) -> list[Sample]:
    with open(path, "rb") as handle:
        return samples_of(pickle.load(handle)[start:stop], start)


def run_stage(signatures: list[tuple[int, bytes]], params, workers: int) -> tuple[dict, int, int, float]:
    """Runs the stage; samples are made inside the pipeline (a big beam.Create would be pickled into the graph)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.test_pipeline import TestPipeline

    options = PipelineOptions([f"--direct_num_workers={workers}"])
    with tempfile.TemporaryDirectory() as folder:
        source = f"{folder}/signatures.pickle"
        with open(source, "wb") as handle:
            pickle.dump(signatures, handle)
        slices = [(source, i, i + 10_000) for i in range(0, len(signatures), 10_000)]
        start = time.perf_counter()
        with TestPipeline(runner=FnApiRunner(), options=options) as pipeline:
            samples = pipeline | beam.Create(slices) | beam.FlatMapTuple(_read_slice)
            result = samples | ImageDedup(params).transform()
            for name in ("kept", "rejected"):
                _ = (result[name] | f"Count{name}" >> beam.combiners.Count.Globally()
                     | f"Write{name}" >> beam.io.WriteToText(f"{folder}/{name}"))
            _ = result["report"] | beam.Map(json.dumps) | "WriteReport" >> beam.io.WriteToText(f"{folder}/report")
        seconds = time.perf_counter() - start

        def read(name):
            return [line for path in glob.glob(f"{folder}/{name}-*") for line in open(path)]

        report = json.loads(read("report")[0])
        return report, int(read("kept")[0]), int(read("rejected")[0]), seconds


def shuffle_bytes_per_sample(samples: list[Sample], params) -> dict[str, float]:
    """Pickled bytes per input sample entering each dedup GroupByKey (see the module doc)."""
    stage = ImageDedup(params)
    candidates = [stage.candidate(s) for s in samples]
    n = len(candidates)
    sizes: Counter = Counter()
    for c in candidates:
        sizes["fingerprint counts (combined)"] += len(pickle.dumps((c.fingerprint, c.node)))
    # As the stage does: a hot fingerprint's samples but one skip the band groups.
    fingerprints = Counter(c.fingerprint for c in candidates)
    representatives = {}
    for c in candidates:
        if fingerprints[c.fingerprint] > params.max_group_size:
            representatives[c.fingerprint] = min(representatives.get(c.fingerprint, c.node), c.node)
    candidates = [c for c in candidates if representatives.get(c.fingerprint, c.node) == c.node]
    band_counts = Counter(k for c in candidates for k in c.band_keys)
    sizes["band key counts (combined)"] = sum(len(pickle.dumps(k)) * count for k, count in band_counts.items())
    hot = {k: v for k, v in band_counts.items() if v > params.max_group_size}
    groups: dict = {}
    for c in candidates:
        for group_key, record in band_records(c, hot, params.max_group_size):
            sizes["band groups"] += len(pickle.dumps((group_key, record)))
            groups.setdefault(group_key, []).append(record)
    edges = {e for records in groups.values() for e in group_edges(records, stage.matcher())[0]}
    edge_size = len(pickle.dumps(next(iter(edges)))) if edges else 0
    for _ in range(params.component_rounds):
        # Large star sends each edge both ways; small star sends the large-star output once.
        larger = {e for node, ns in group_pairs(p for e in edges for p in both_directions(e)).items()
                  for e in large_star(node, ns)}
        sizes["component rounds"] += (2 * len(edges) + len(larger)) * edge_size
        edges = {e for node, ns in group_pairs(larger).items() for e in small_star(node, ns)}
    sizes["resolve"] = 4 * len(edges) * edge_size
    sample_record = pickle.dumps((samples[0].key, samples[0]))
    sizes["loser join, per sample without image"] = len(sample_record) * n
    return {name: total / n for name, total in sizes.items()}, len(hot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1, help="direct_num_workers (in-process threads)")
    parser.add_argument("--max-distance", type=int, default=ImageDedup.Params().max_distance)
    parser.add_argument("--bands-per-key", type=int, default=1)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)

    params = ImageDedup.Params(max_distance=args.max_distance, bands_per_key=args.bands_per_key)
    signatures = synthetic_signatures(args.samples, args.max_distance, args.seed)
    samples = samples_of(signatures)
    print(f"{len(samples)} samples, {params}")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report, kept, rejected, seconds = run_stage(signatures, params, args.workers)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\nBeam (FnApiRunner, {args.workers} worker): {seconds:.1f} s, {1e6 * seconds / len(samples):.0f} us/sample")
    print(f"peak RSS: {rss_after / 1024:.0f} MiB (before the pipeline: {rss_before / 1024:.0f} MiB)")
    print(f"kept {kept} + rejected {rejected} = {kept + rejected} (input {len(samples)})")
    summary = {k: report[k] for k in ("clusters", "dropped", "pairs_compared", "unresolved", "cluster_size_histogram")}
    print(f"report: {json.dumps(summary)}")
    print(f"hot fingerprints: {json.dumps(report['hot_fingerprints']['largest'][:3])}")
    print(f"hot band keys: {report['hot_band_keys']['count']}, largest: "
          f"{json.dumps(report['hot_band_keys']['largest'][:3])}")

    stage = ImageDedup(params)
    memory_losers, _ = cluster_in_memory([stage.candidate(s) for s in samples], stage.matcher(),
                                         params.max_group_size, params.component_rounds)
    print(f"in-memory clustering drops {len(memory_losers)} (Beam: {rejected})")

    per_sample, hot_bands = shuffle_bytes_per_sample(samples, params)
    print(f"\nestimated shuffle bytes per input sample ({hot_bands} hot band keys):")
    for name, value in per_sample.items():
        print(f"  {name:<40} {value:>8.1f}")
    dedup_total = sum(v for k, v in per_sample.items() if not k.startswith("loser join"))
    print(f"  {'total dedup shuffles (excl. join)':<40} {dedup_total:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
