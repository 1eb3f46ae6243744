"""The `dedup_semantic` stage (SemDeDup) at 100k embeddings: time, CPU, memory, and removal against planted pairs.

The embeddings are generated, clustered like real ones: `topics` random unit
centres in `dim` dimensions; each base embedding is its topic's centre plus
Gaussian noise of norm about 1, so two bases of one topic have cosine about
0.5 (at most ~0.65 over a topic's pairs) and k-means finds the topics.  A
`pairs` of the bases get one planted near-copy each, at a cosine similarity
drawn uniformly from [min_similarity, 1): copy = s*base + sqrt(1-s^2)*u with u
a unit vector orthogonal to the base.  Embeddings are then rounded to float16
(what `clip_score` stores) or kept float32.

What is checked, per threshold eps (a sample goes when its cosine to an
earlier sample of its cluster exceeds 1 - eps), computed here from the
planted pairs, not from the stage:

* every sample is kept or rejected once;
* every removed sample is one half of a planted pair, its `duplicate_of` the
  other half (no unrelated sample goes);
* a planted pair goes (one half) exactly when its cosine, computed from the
  stored vectors, exceeds 1 - eps and k-means put both halves in one cluster
  (SemDeDup compares only within a cluster; split pairs are counted);
* removal is monotone: the removed set at a smaller eps is a subset of the
  one at a larger eps;
* no k-means cluster is wiped out (the stage's clustering recomputed here:
  seeded, single-threaded, key order, so the same clusters).

The whole stage transform runs through Beam's FnApiRunner in this process
(one worker: the stage gathers every embedding on one worker anyway), each
threshold in a fresh child process so its peak RSS and CPU time are its own.
The transform is not a thin wrapper (split by embedding, gather, k-means and
per-cluster comparison, a CoGroupByKey join back to the samples), so the
core (`semantic_losers`: k-means + comparison) is also timed alone.

    python benchmarks/semdedup_scale.py --samples 100000 --eps 0.01 0.05 0.1
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.dedup_semantic import SemanticDedup, cluster_assignments, embedding_of, semantic_losers  # noqa: E402
from pipeline.core.records import Sample  # noqa: E402

FIELD = SemanticDedup.Params().field
SLICE = 10_000  # samples read per Beam element


@dataclass(frozen=True)
class PoolSpec:
    samples: int = 100_000
    dim: int = 512
    topics: int = 100
    pairs: int = 20_000  # bases with one planted near-copy
    min_similarity: float = 0.8
    dtype: str = "float16"
    seed: int = 0


@dataclass(frozen=True)
class Pool:
    vectors: np.ndarray  # samples x dim, stored dtype, row i is sample key f"{i:07d}"
    partner: np.ndarray  # row of the other half of a planted pair, -1 for none


def generate(spec: PoolSpec) -> Pool:
    rng = np.random.default_rng(spec.seed)
    bases = spec.samples - spec.pairs
    centres = _unit(rng.standard_normal((spec.topics, spec.dim)))
    noise = rng.standard_normal((bases, spec.dim), dtype=np.float32) / np.float32(np.sqrt(spec.dim))
    base = _unit(centres[rng.integers(0, spec.topics, bases)].astype(np.float32) + noise)
    originals = rng.choice(bases, spec.pairs, replace=False)
    similarity = rng.uniform(spec.min_similarity, 1.0, spec.pairs).astype(np.float32)
    direction = rng.standard_normal((spec.pairs, spec.dim), dtype=np.float32)
    direction = _unit(direction - np.sum(direction * base[originals], axis=1, keepdims=True) * base[originals])
    copies = similarity[:, None] * base[originals] + np.sqrt(1 - similarity**2)[:, None] * direction
    vectors = np.concatenate([base, copies])
    partner = np.full(spec.samples, -1)
    partner[originals], partner[bases + np.arange(spec.pairs)] = bases + np.arange(spec.pairs), originals
    order = rng.permutation(spec.samples)  # rows (and keys) shuffled: a pair is not two neighbouring keys
    inverse = np.argsort(order)
    return Pool(vectors[order].astype(spec.dtype), np.where(partner[order] >= 0, inverse[partner[order]], -1))


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def key_of(row: int) -> str:
    return f"{row:07d}"


def _read_slice(path: str, start: int, stop: int) -> list[Sample]:
    """Samples as the stage sees them after clip_score: float16 values as a list of floats, or a float32 array."""
    rows = np.load(path, mmap_mode="r")[start:stop]
    as_field = (lambda row: row.tolist()) if rows.dtype == np.float16 else np.array
    return [Sample(key=key_of(start + i), shard_id=0, url="", fields={FIELD: as_field(row)}) for i, row in enumerate(rows)]


# ---------------------------------------------------------------- one run (in a child process)


def run_stage(vectors_path: str, samples: int, params: SemanticDedup.Params, folder: str) -> dict:
    """The stage's transform on FnApiRunner in this process; removed keys with duplicate_of, kept count, times."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    slices = [(vectors_path, i, min(i + SLICE, samples)) for i in range(0, samples, SLICE)]
    wall, cpu = time.perf_counter(), _cpu_seconds()
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(["--direct_num_workers=1"])) as pipeline:
        result = pipeline | beam.Create(slices) | beam.FlatMapTuple(_read_slice) | SemanticDedup(params).transform()
        _ = (result["kept"] | "CountKept" >> beam.combiners.Count.Globally()
             | "WriteKept" >> beam.io.WriteToText(f"{folder}/kept"))
        _ = (result["rejected"] | beam.Map(lambda r: json.dumps([r.key, r.reason, r.fields.get("duplicate_of")]))
             | "WriteRejected" >> beam.io.WriteToText(f"{folder}/rejected"))
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    rejected = [json.loads(line) for path in glob.glob(f"{folder}/rejected-*") for line in open(path)]
    kept = sum(int(line) for path in glob.glob(f"{folder}/kept-*") for line in open(path))
    return {"kept": kept, "rejected": rejected, "wall_s": wall, "cpu_s": cpu}


def time_core(vectors: np.ndarray, params: SemanticDedup.Params) -> dict:
    """`semantic_losers` alone (k-means + per-cluster comparison), on the vectors as the stage makes them."""
    keyed = [(key_of(i), embedding_of(Sample(key="", shard_id=0, url="", fields={FIELD: row}), FIELD))
             for i, row in enumerate(vectors)]
    wall, cpu = time.perf_counter(), _cpu_seconds()
    losers = sum(1 for _ in semantic_losers(keyed, params))
    return {"losers": losers, "wall_s": time.perf_counter() - wall, "cpu_s": _cpu_seconds() - cpu}


def _cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def one_run(vectors_path: str, params: SemanticDedup.Params, core: bool) -> dict:
    samples = len(np.load(vectors_path, mmap_mode="r"))
    rss_before, load = _maxrss_mib(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="semdedup-") as folder:
        result = run_stage(vectors_path, samples, params, folder)
    result.update(eps=params.eps, peak_rss_mib=_maxrss_mib(), rss_before_mib=rss_before, load_1min=load)
    if core:
        result["core"] = time_core(np.load(vectors_path), params)
    return result


def _maxrss_mib() -> float:
    """This process's peak RSS: VmHWM, which exec resets (Linux keeps ru_maxrss across fork+exec: the parent's peak)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the expectation and the checks


def expected_removals(pool: Pool, params: SemanticDedup.Params, eps_values: list[float]) -> dict:
    """Planted pairs that should go at each eps, from the stored vectors; the stage's clusters, recomputed."""
    stored = np.stack([embedding_of(Sample(key="", shard_id=0, url="", fields={FIELD: row}), FIELD)
                       for row in pool.vectors])
    assigned, _ = cluster_assignments(stored, params)  # rows are in key order, as the stage sorts them
    firsts = np.flatnonzero(pool.partner > np.arange(len(pool.partner)))
    cosine = np.sum(stored[firsts] * stored[pool.partner[firsts]], axis=1)
    together = assigned[firsts] == assigned[pool.partner[firsts]]
    return {
        "assigned": assigned,
        "split_pairs": int((~together).sum()),
        "expected": {eps: int(((cosine > 1 - eps) & together).sum()) for eps in eps_values},
        "above_threshold": {eps: int((cosine > 1 - eps).sum()) for eps in eps_values},
    }


def check_run(run: dict, pool: Pool, expected: dict, samples: int) -> list[str]:
    problems = []
    removed = {key: duplicate_of for key, reason, duplicate_of in run["rejected"] if reason == "semantic_duplicate"}
    if run["kept"] + len(run["rejected"]) != samples:
        problems.append(f"{samples - run['kept'] - len(run['rejected'])} samples neither kept nor rejected")
    strangers = [key for key, other in removed.items() if pool.partner[int(key)] != int(other or -1)]
    if strangers:
        problems.append(f"{len(strangers)} removed samples are not the other half of a planted pair, e.g. {strangers[0]}")
    if len(removed) != expected["expected"][run["eps"]]:
        problems.append(f"eps {run['eps']}: removed {len(removed)}, expected {expected['expected'][run['eps']]}")
    sizes = np.bincount(expected["assigned"])
    lost = np.bincount(expected["assigned"][[int(key) for key in removed]], minlength=len(sizes))
    if np.any((sizes > 0) & (lost >= sizes)):
        problems.append("a cluster lost every sample")
    run["removed_keys"] = set(removed)
    run["largest_cluster_removal_share"] = float(np.max(lost / np.maximum(sizes, 1)))
    return problems


def check_monotone(runs: list[dict]) -> list[str]:
    ordered = sorted(runs, key=lambda run: run["eps"])
    return [f"removed at eps {a['eps']} is not a subset of removed at eps {b['eps']}"
            for a, b in zip(ordered, ordered[1:]) if not a["removed_keys"] <= b["removed_keys"]]


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in asdict(PoolSpec()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    parser.add_argument("--clusters", type=int, default=SemanticDedup.Params().clusters)
    parser.add_argument("--one-run", metavar="VECTORS_NPY", help="(internal) run the first eps on these vectors here")
    parser.add_argument("--core", action="store_true", help="(internal) with --one-run, also time semantic_losers alone")
    args = parser.parse_args(argv)
    params = [SemanticDedup.Params(clusters=args.clusters, eps=eps) for eps in args.eps]
    if args.one_run:
        print(json.dumps(one_run(args.one_run, params[0], args.core)))
        return 0
    spec = PoolSpec(**{name: getattr(args, name) for name in asdict(PoolSpec())})
    pool = generate(spec)
    with tempfile.TemporaryDirectory(prefix="semdedup-") as folder:
        np.save(f"{folder}/vectors.npy", pool.vectors)  # the children read it: generation is not in their figures
        runs = [_child_run(f"{folder}/vectors.npy", args.clusters, eps, core=eps == max(args.eps)) for eps in args.eps]
    expected = expected_removals(pool, params[0], args.eps)
    problems = [problem for run in runs for problem in check_run(run, pool, expected, spec.samples)]
    problems += check_monotone(runs)
    _print_figures(spec, args.clusters, runs, expected)
    print("checks: " + ("all hold" if not problems else "; ".join(problems)))
    return 1 if problems else 0


def _child_run(vectors_path: str, clusters: int, eps: float, core: bool) -> dict:
    """One eps in a fresh process, so that its peak RSS and CPU time are its own."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one-run", vectors_path, "--clusters", str(clusters),
               "--eps", str(eps), *(["--core"] if core else [])]
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _print_figures(spec: PoolSpec, clusters: int, runs: list[dict], expected: dict) -> None:
    print(f"{spec.samples:,} embeddings, {spec.dim}-d {spec.dtype}, {spec.topics} topics, {spec.pairs:,} planted pairs "
          f"(cosine U[{spec.min_similarity}, 1)), {clusters} k-means clusters; "
          f"{expected['split_pairs']} pairs split across clusters")
    for run in runs:
        eps = run["eps"]
        print(f"eps {eps}: removed {len(run['removed_keys']):,} (expected {expected['expected'][eps]:,}; "
              f"{expected['above_threshold'][eps]:,} pairs above 1-eps); wall {run['wall_s']:.1f} s "
              f"(load {run['load_1min']:.1f}), CPU {run['cpu_s']:.1f} s = {1e6 * run['cpu_s'] / spec.samples:.0f} "
              f"us/embedding; peak RSS {run['peak_rss_mib']:,.0f} MiB (before the pipeline: {run['rss_before_mib']:,.0f}); "
              f"largest removal share of a cluster {run['largest_cluster_removal_share']:.3f}")
        if "core" in run:
            core = run["core"]
            print(f"  core alone (semantic_losers: k-means + comparison): wall {core['wall_s']:.1f} s, "
                  f"CPU {core['cpu_s']:.1f} s, {core['losers']:,} losers")


if __name__ == "__main__":
    sys.exit(main())
