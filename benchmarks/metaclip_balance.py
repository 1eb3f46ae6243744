"""The `balance` stage on a generated Zipf pool: correctness against the algorithm's expectation, time, memory.

The pool: N captions "a photo of entK" whose entry K is drawn from a Zipf
distribution over E entries (p_K proportional to (K+1)^-s), optionally some
captions with two entries and some with none.  The entries' true counts come
from the generator, not from the stage.  Expectations, computed here
independently of filters/balance.py:

* an entry counted n <= t times (tail) is kept whole;
* a single-entry caption of an entry counted n > t times is kept with
  probability t / n, so that entry's kept count is Binomial(n, t / n), mean t.
  With a union bound over the H head entries, the kept count exceeds the
  binomial upper quantile u(n) = isf(delta / H) with probability at most
  delta overall: epsilon = max over head entries of u(n) / t - 1.

    python benchmarks/metaclip_balance.py --captions 1000000 --workers 2

prints the figures and exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np

from filters.balance import Balance
from pipeline.core.records import Sample

CHUNK = 10000  # captions generated per Beam element


@dataclass(frozen=True)
class PoolSpec:
    captions: int
    entries: int = 10000
    zipf_s: float = 1.0
    two_entry_fraction: float = 0.0
    unmatched_fraction: float = 0.0
    seed: int = 0


def entry_name(index: int) -> str:
    return f"ent{index}"


def write_entries(spec: PoolSpec, path: Path) -> Path:
    path.write_text("".join(f"{entry_name(i)}\n" for i in range(spec.entries)), encoding="utf-8")
    return path


def zipf_probabilities(spec: PoolSpec) -> np.ndarray:
    weights = np.arange(1, spec.entries + 1, dtype=np.float64) ** -spec.zipf_s
    return weights / weights.sum()


def chunk_entries(spec: PoolSpec, chunk: int) -> list[tuple[int, ...]]:
    """The true entries of each caption of one chunk: () for an unmatched caption."""
    rng = np.random.default_rng([spec.seed, chunk])
    size = min(CHUNK, spec.captions - chunk * CHUNK)
    probabilities = zipf_probabilities(spec)
    first = rng.choice(spec.entries, size=size, p=probabilities)
    second = rng.choice(spec.entries, size=size, p=probabilities)
    kind = rng.random(size)
    rows: list[tuple[int, ...]] = []
    for a, b, u in zip(first.tolist(), second.tolist(), kind.tolist()):
        if u < spec.unmatched_fraction:
            rows.append(())
        elif u < spec.unmatched_fraction + spec.two_entry_fraction and a != b:
            rows.append((a, b))
        else:
            rows.append((a,))
    return rows


def chunks(spec: PoolSpec) -> range:
    return range((spec.captions + CHUNK - 1) // CHUNK)


def caption_of(entries: tuple[int, ...]) -> str:
    if not entries:
        return "a photo of nothing listed"
    return "a photo of " + " and ".join(entry_name(e) for e in entries)


def chunk_samples(chunk: int, spec: PoolSpec):
    for offset, entries in enumerate(chunk_entries(spec, chunk)):
        index = chunk * CHUNK + offset
        yield Sample(key=f"{index:09d}", shard_id=0, url=f"http://pool.test/{index}", caption=caption_of(entries))


def true_entries(spec: PoolSpec) -> list[tuple[int, ...]]:
    return [row for chunk in chunks(spec) for row in chunk_entries(spec, chunk)]


def true_counts(rows: list[tuple[int, ...]], entries: int) -> np.ndarray:
    counts = np.zeros(entries, dtype=np.int64)
    for row in rows:
        counts[list(row)] += 1
    return counts


# ---------------------------------------------------------------- the expectation


def expected_keep_probability(row: tuple[int, ...], counts: np.ndarray, t: int) -> float:
    """MetaCLIP's rule written from the paper: 1 - prod(1 - min(1, t / n_e)); 0 for no entry."""
    if not row:
        return 0.0
    return 1.0 - float(np.prod([1.0 - min(1.0, t / counts[e]) for e in row]))


def head_upper_bounds(counts: np.ndarray, t: int, delta: float) -> dict[int, int]:
    """For each head entry (n > t): u with P(Binomial(n, t/n) > u) <= delta / (number of head entries)."""
    from scipy.stats import binom

    head = np.flatnonzero(counts > t)
    if len(head) == 0:
        return {}
    tail_mass = delta / len(head)
    return {int(e): int(binom.isf(tail_mass, counts[e], t / counts[e])) for e in head}


def epsilon(bounds: dict[int, int], t: int) -> float:
    return max((u / t - 1.0 for u in bounds.values()), default=0.0)


# ---------------------------------------------------------------- running the stage


def _write_result(parts, path: str) -> None:
    kept, reasons, report = parts
    Path(path).write_text(json.dumps({"kept": sorted(kept), "reasons": reasons, "report": report}), encoding="utf-8")


def run_balance(spec: PoolSpec, params: Balance.Params, workers: int, result_path: Path) -> dict:
    """Runs the stage on the pool with `workers` processes (0: in this process); returns kept keys, reasons, report."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.engine.run import _local_runner

    args = [] if workers == 0 else [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    options = PipelineOptions(args)
    with beam.Pipeline(runner=_local_runner(options), options=options) as pipeline:
        samples = pipeline | beam.Create(list(chunks(spec))) | beam.Reshuffle() | beam.FlatMap(chunk_samples, spec)
        outputs = samples | Balance(params).transform()
        kept = outputs["kept"] | beam.Map(lambda s: s.key) | "KeptKeys" >> beam.combiners.ToList()
        reasons = (
            outputs["rejected"]
            | beam.Map(lambda r: f"{r.stage}/{r.reason}")
            | beam.combiners.Count.PerElement()
            | "Reasons" >> beam.combiners.ToDict()
        )
        (
            pipeline
            | "One" >> beam.Create([None])
            | beam.Map(
                lambda _, k, r, rep: (k, r, rep),
                beam.pvalue.AsSingleton(kept),
                beam.pvalue.AsSingleton(reasons),
                beam.pvalue.AsSingleton(outputs["report"]),
            )
            | beam.Map(_write_result, str(result_path))
        )
    return json.loads(result_path.read_text(encoding="utf-8"))


def kept_counts(kept_keys: list[str], rows: list[tuple[int, ...]], entries: int) -> np.ndarray:
    return true_counts([rows[int(key)] for key in kept_keys], entries)


def check(spec: PoolSpec, t: int, result: dict, delta: float = 1e-6) -> list[str]:
    """What differs from the expectation (empty when all holds); single-entry pools only for the bound."""
    rows = true_entries(spec)
    counts = true_counts(rows, spec.entries)
    kept = kept_counts(result["kept"], rows, spec.entries)
    problems = []
    accounted = len(result["kept"]) + sum(result["reasons"].values())
    if accounted != spec.captions:
        problems.append(f"{spec.captions - accounted} captions neither kept nor rejected")
    tail = np.flatnonzero((counts > 0) & (counts <= t))
    if spec.two_entry_fraction == 0:
        short = [int(e) for e in tail if kept[e] != counts[e]]
        if short:
            problems.append(f"{len(short)} tail entries not kept whole, e.g. {entry_name(short[0])}")
        bounds = head_upper_bounds(counts, t, delta)
        over = [e for e, u in bounds.items() if kept[e] > u]
        if over:
            problems.append(f"{len(over)} head entries above their binomial bound, e.g. {entry_name(over[0])}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--t", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="0 runs in this process")
    args = parser.parse_args(argv)
    spec = PoolSpec(captions=args.captions, entries=args.entries)
    with tempfile.TemporaryDirectory() as folder:
        entries_path = write_entries(spec, Path(folder) / "entries.txt")
        params = Balance.Params(t=args.t, entries_path=str(entries_path))
        start = time.perf_counter()
        result = run_balance(spec, params, args.workers, Path(folder) / "result.json")
        seconds = time.perf_counter() - start
    rows = true_entries(spec)
    counts = true_counts(rows, spec.entries)
    kept = kept_counts(result["kept"], rows, spec.entries)
    bounds = head_upper_bounds(counts, args.t, 1e-6)
    print(f"{args.captions:,} captions, {spec.entries:,} entries (Zipf s={spec.zipf_s}), t={args.t}, "
          f"{args.workers} workers: {seconds:.1f} s, {args.captions / seconds:,.0f} captions/s")
    print(f"peak RSS: launcher {_maxrss_mib(resource.RUSAGE_SELF):,.0f} MiB, "
          f"largest worker {_maxrss_mib(resource.RUSAGE_CHILDREN):,.0f} MiB")
    print(f"kept {len(result['kept']):,}; rejects {result['reasons']}")
    print(f"head entries {len(bounds)}; largest count {counts.max():,}; largest kept {kept.max():,}; "
          f"epsilon (delta=1e-6, union over head entries) {epsilon(bounds, args.t):.3f}; "
          f"largest kept / t {kept.max() / args.t:.3f}")
    problems = check(spec, args.t, result)
    print("checks: " + ("all hold" if not problems else "; ".join(problems)))
    return 1 if problems else 0


def _maxrss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
