"""dedup_semantic: SemDeDup over embeddings, against planted near-duplicates."""
from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from filters.dedup_semantic import SemanticDedup, cluster_report, semantic_losers
from pipeline.core.registry import get_stage
from pipeline.core.records import Sample

pytest.importorskip("faiss")

DIM = 64


def planted(n: int, duplicates: int, seed: int = 0):
    """n random unit vectors; the first `duplicates` get a copy at cosine > 0.99 (keys n..)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, DIM))
    copies = base[:duplicates] + rng.normal(scale=0.05, size=(duplicates, DIM))
    vectors = np.concatenate([base, copies])
    return [(f"{i:06d}", v / np.linalg.norm(v)) for i, v in enumerate(vectors.astype(np.float32))]


def test_registered():
    assert get_stage("dedup_semantic") is SemanticDedup


@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_exactly_one_of_each_planted_pair_goes(keep):
    keyed = planted(1500, 100)
    params = SemanticDedup.Params(clusters=10, eps=0.05, keep=keep)
    losers = dict(semantic_losers(keyed, params))
    pairs = {frozenset((f"{i:06d}", f"{1500 + i:06d}")) for i in range(100)}
    # Random 64-d unit vectors are nowhere near cosine 0.95: only planted pairs can go, one of each.
    assert len(losers) == 100
    assert {frozenset((loser, info["duplicate_of"])) for loser, info in losers.items()} == pairs
    assert losers == dict(semantic_losers(list(reversed(keyed)), params))  # input order does not matter


def test_eps_zero_drops_only_identical():
    keyed = planted(200, 0) + [("999999", planted(200, 0)[5][1].copy())]
    assert dict(semantic_losers(keyed, SemanticDedup.Params(clusters=4, eps=1e-6))) == {
        "999999": {"duplicate_of": "000005"}
    }


def test_in_beam_with_reasons(tmp_path):
    keyed = planted(300, 20)
    samples = [Sample(key=k, shard_id=0, url="u", fields={"clip_image_embedding": v.tolist()}) for k, v in keyed]
    samples.append(Sample(key="zzz", shard_id=0, url="u"))
    path = tmp_path / "out.json"

    def write(_, kept, rejected, report):
        path.write_text(json.dumps({"kept": kept, "rejected": rejected, "report": report}))

    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        out = pipeline | beam.Create(samples, reshuffle=False) | SemanticDedup(SemanticDedup.Params(clusters=5)).transform()
        kept = out["kept"] | beam.Map(lambda s: s.key) | "K" >> beam.combiners.ToList()
        rejected = out["rejected"] | beam.Map(lambda r: (r.key, r.stage, r.reason)) | "R" >> beam.combiners.ToList()
        _ = pipeline | "One" >> beam.Create([None]) | beam.Map(
            write, beam.pvalue.AsSingleton(kept), beam.pvalue.AsSingleton(rejected), beam.pvalue.AsSingleton(out["report"]))
    result = json.loads(path.read_text())
    reasons = {key: (stage, reason) for key, stage, reason in result["rejected"]}
    assert reasons.pop("zzz") == ("dedup_semantic", "missing_embedding")
    assert set(reasons.values()) == {("dedup_semantic", "semantic_duplicate")} and len(reasons) == 20
    assert len(result["kept"]) == 300
    report = result["report"]  # what the audit shows under dedup.dedup_semantic
    assert report["clusters"] == 5 and report["embedded_samples"] == 320 and report["removed"] == 20
    assert sum(report["cluster_sizes"].values()) == 5 and report["clusters_emptied"] == 0


def test_the_report_counts_each_cluster_by_hand():
    sizes, removed = [1, 2, 10, 40], [0, 1, 3, 0]
    report = cluster_report(sizes, removed, eps=0.05)
    assert report["cluster_sizes"] == {"1": 1, "2": 1, "9-16": 1, "33-64": 1}
    assert report["removed"] == 4 and report["embedded_samples"] == 53
    assert report["clusters_left_with_one"] == 1  # the pair lost one
    assert report["removed_share_quantiles"]["1.0"] == 0.5 and report["clusters_emptied"] == 0
    assert report["largest_clusters"][0] == {"size": 40, "removed": 0}
    assert cluster_report([3], [3], eps=0.05)["clusters_emptied"] == 1  # what SemDeDup itself never does


@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_hard_keeps_the_one_farther_from_the_centroid(keep):
    # One cluster: its centroid is the normalised mean of all vectors, computed here independently.
    keyed = planted(300, 30, seed=4)
    vectors = np.stack([v for _, v in keyed])
    centroid = vectors.mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    losers = dict(semantic_losers(keyed, SemanticDedup.Params(clusters=1, keep=keep)))
    assert len(losers) == 30
    for i in range(30):
        a, b = i, 300 + i
        nearer = a if vectors[a] @ centroid > vectors[b] @ centroid else b
        farther = b if nearer == a else a
        expected_loser = nearer if keep == "hard" else farther
        assert f"{expected_loser:06d}" in losers


def test_scale_benchmark_plants_pairs_at_the_stated_similarity():
    from benchmarks.semdedup_scale import PoolSpec, generate

    spec = PoolSpec(samples=3000, dim=64, topics=5, pairs=500, min_similarity=0.9, dtype="float32")
    pool = generate(spec)
    rows = np.flatnonzero(pool.partner >= 0)
    assert len(rows) == 2 * spec.pairs and np.array_equal(pool.partner[pool.partner[rows]], rows)
    cosine = np.sum(pool.vectors[rows] * pool.vectors[pool.partner[rows]], axis=1)
    assert cosine.min() >= 0.9 - 1e-5 and cosine.max() < 1.0
    bases = pool.vectors[pool.partner < 0][:300]
    unrelated = bases @ bases.T - np.eye(len(bases)) * 2
    assert unrelated.max() < 0.8  # unpaired samples are far below any planted pair


@pytest.mark.slow
def test_scale_benchmark_checks_hold_on_a_small_pool(capsys):
    from benchmarks.semdedup_scale import main

    assert main(["--samples", "4000", "--pairs", "800", "--topics", "8", "--clusters", "8", "--eps", "0.02", "0.1"]) == 0
    assert "checks: all hold" in capsys.readouterr().out
