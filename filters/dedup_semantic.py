"""Semantic deduplication over CLIP image embeddings: SemDeDup (Abbas et al. 2023).

The embeddings (`field`, written by `clip_score` with `store_embeddings`) are
L2-normalised and clustered with spherical k-means (faiss-cpu, fixed seed,
one thread, samples in key order, so the clusters are the same on every run).
Within each cluster the samples are ordered by cosine distance to the
centroid, farthest first (`keep: hard`, SemDeDup's default; `easy` is
nearest first), and a sample is dropped when its cosine similarity to any
sample before it in that order exceeds 1 - `eps`; `duplicate_of` names that
most similar earlier sample.  As in SemDeDup, the comparison is with every
earlier sample, dropped or not.

All embeddings go to one worker (4 bytes per dimension per sample: 2 GB for a
million 512-d embeddings), and each cluster's similarity matrix is
size^2 floats: choose `clusters` so that clusters stay below ~20,000 samples.
A sample without a usable embedding is dropped as `missing_embedding`.

The audit (`dedup.dedup_semantic`) gets the number of clusters, a histogram
of their sizes, the quantiles of the share of each cluster removed, how many
were left with one sample, that none was emptied (the first sample of a
cluster's order is never dropped), and the largest clusters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import apache_beam as beam
import numpy as np

from pipeline.core.stage import DatasetStage, Needs
from pipeline.dedup.cluster_report import LARGEST_CLUSTERS, size_bucket
from pipeline.dedup.groups import DropLosers, check_range
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import REJECTED, Sample



@register
class SemanticDedup(DatasetStage):
    name = "dedup_semantic"
    NEEDS = Needs(pixels=False)
    report_section = "dedup"

    @dataclass(frozen=True)
    class Params:
        field: str = "clip_image_embedding"  # the embedding to compare (clip_score with store_embeddings)
        clusters: int = 100  # k-means clusters; pairs are compared only within one
        eps: float = 0.05  # drop when cosine similarity > 1 - eps
        keep: Literal["hard", "easy"] = "hard"  # hard: keep the copy farthest from its centroid (SemDeDup)
        niter: int = 50  # k-means iterations
        seed: int = 1234  # k-means initialisation

        def __post_init__(self) -> None:
            check_range("dedup_semantic.clusters", self.clusters, 1, 10**6)
            check_range("dedup_semantic.niter", self.niter, 1, 1000)
            if not 0.0 <= self.eps < 1.0:
                raise ParamError(f"dedup_semantic.eps must be within [0, 1), got {self.eps}")

    def transform(self) -> beam.PTransform:
        return _SemanticDedup(self.name, self.params)


def embedding_of(sample: Sample, field: str) -> np.ndarray | None:
    """The sample's embedding as float32, L2-normalised; None when absent or unusable."""
    value = sample.fields.get(field)
    try:
        vector = np.frombuffer(value, np.float16) if isinstance(value, bytes) else np.asarray(value, np.float32)
    except (TypeError, ValueError):
        return None
    vector = vector.astype(np.float32).ravel()
    norm = float(np.linalg.norm(vector)) if vector.size else 0.0
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return vector / norm


def cluster_assignments(vectors: np.ndarray, params: SemanticDedup.Params) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each row, centroids), by seeded single-threaded spherical k-means."""
    import faiss

    faiss.omp_set_num_threads(1)  # threads would make the sums, and so the clusters, vary
    count = min(params.clusters, len(vectors))
    kmeans = faiss.Kmeans(vectors.shape[1], count, niter=params.niter, seed=params.seed, spherical=True,
                          verbose=False, min_points_per_centroid=1,
                          max_points_per_centroid=max(256, len(vectors)))  # train on every sample, not a subsample
    kmeans.train(vectors)
    _, assigned = kmeans.index.search(vectors, 1)
    return assigned.ravel(), kmeans.centroids


def semantic_losers(keyed: list[tuple[str, np.ndarray]], params: SemanticDedup.Params) -> Iterable[tuple[str, dict]]:
    """(loser key, {"duplicate_of": key}) for every sample SemDeDup drops (see the module doc)."""
    return semantic_dedup(keyed, params)[0]


def semantic_dedup(keyed: list[tuple[str, np.ndarray]], params: SemanticDedup.Params) -> tuple[list, dict]:
    """(the losers, as `semantic_losers` gives them; the report: cluster sizes and removal per cluster)."""
    sizes, removed, losers = [], [], []
    if len(keyed) >= 2:
        keyed = sorted(keyed, key=lambda pair: pair[0])
        keys = [key for key, _ in keyed]
        vectors = np.stack([vector for _, vector in keyed]).astype(np.float32)
        assigned, centroids = cluster_assignments(vectors, params)
        for cluster in range(len(centroids)):
            members = np.flatnonzero(assigned == cluster)
            dropped = list(_cluster_losers(members, vectors, centroids[cluster], keys, params))
            sizes.append(len(members))
            removed.append(len(dropped))
            losers += dropped
    return losers, cluster_report(sizes, removed, params.eps)


def cluster_report(sizes: list[int], removed: list[int], eps: float) -> dict:
    """The audit's view of the clusters: how big they are and how much of each was removed."""
    sizes_array, removed_array = np.asarray(sizes, float), np.asarray(removed, float)
    share = np.divide(removed_array, sizes_array, out=np.zeros_like(sizes_array), where=sizes_array > 0)
    size_histogram: dict[str, int] = {}
    for size in sizes:
        bucket = "1" if size < 2 else size_bucket(size)
        size_histogram[bucket] = size_histogram.get(bucket, 0) + 1
    largest = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))[:LARGEST_CLUSTERS]
    return {
        "eps": eps,
        "clusters": len(sizes),
        "embedded_samples": int(sizes_array.sum()),
        "removed": int(removed_array.sum()),
        "cluster_sizes": size_histogram,
        # Share of each cluster removed: its quantiles over the clusters, and clusters left with one sample.
        "removed_share_quantiles": {q: round(float(np.quantile(share, float(q))), 4) if len(share) else 0.0
                                    for q in ("0.5", "0.9", "0.99", "1.0")},
        "clusters_left_with_one": int(np.sum((sizes_array > 1) & (sizes_array - removed_array == 1))),
        "clusters_emptied": int(np.sum((sizes_array > 0) & (removed_array >= sizes_array))),
        "largest_clusters": [{"size": sizes[i], "removed": removed[i]} for i in largest],
    }


def _cluster_losers(members, vectors, centroid, keys, params) -> Iterable[tuple[str, dict]]:
    if len(members) < 2:
        return
    distance = 1.0 - vectors[members] @ (centroid / np.linalg.norm(centroid))
    direction = -1.0 if params.keep == "hard" else 1.0
    order = members[np.lexsort((members, direction * distance))]  # ties: key order
    similarity = np.triu(vectors[order] @ vectors[order].T, k=1)  # row i < column j: i comes first
    best_earlier = similarity.argmax(axis=0)
    for position in np.flatnonzero(similarity.max(axis=0) > 1.0 - params.eps):
        yield keys[order[position]], {"duplicate_of": keys[order[best_earlier[position]]]}


class _SplitByEmbedding(beam.DoFn):
    def __init__(self, stage: str, field: str):
        self._stage, self._field = stage, field

    def process(self, sample: Sample):
        if embedding_of(sample, self._field) is None:
            yield beam.pvalue.TaggedOutput(REJECTED, sample.reject(self._stage, "missing_embedding"))
        else:
            yield sample


class _SemanticDedup(beam.PTransform):
    def __init__(self, stage: str, params: SemanticDedup.Params):
        super().__init__()
        self._stage, self._params = stage, params

    def expand(self, samples):
        p = self._params
        split = samples | "SplitByEmbedding" >> beam.ParDo(_SplitByEmbedding(self._stage, p.field)).with_outputs(
            REJECTED, main="embedded"
        )
        result = (
            split.embedded
            | "KeyedEmbeddings" >> beam.Map(lambda s: (s.key, embedding_of(s, p.field)))
            | "AllEmbeddings" >> beam.combiners.ToList()
            | "SemDeDup" >> beam.Map(semantic_dedup, p)
        )
        losers = result | "Losers" >> beam.FlatMap(lambda losers_and_report: losers_and_report[0])
        report = result | "Report" >> beam.Map(lambda losers_and_report: losers_and_report[1])
        dropped = split.embedded | "DropDuplicates" >> DropLosers(self._stage, "semantic_duplicate", losers)
        rejected = (split[REJECTED], dropped["rejected"]) | "AllRejects" >> beam.Flatten()
        return {"kept": dropped["kept"], "rejected": rejected, "report": report}

