"""Near-duplicate clustering as Beam shuffles, shared by the dedup stages.

A stage turns each sample into a `Candidate`: a small record with the
sample's `node` (its rank for the keep policy, then its key), a
`fingerprint` (equal fingerprints are duplicates without looking further),
its LSH `band_keys` and a `payload` that a `PairMatcher` compares.  Images
never enter these shuffles.  `NearDuplicateClusters` then:

1. Collapses hot fingerprints.  A fingerprint shared by more than
   `max_group_size` samples (blank images, a placeholder caption) is found by
   a combiner (bounded per worker); its best-ranked sample stands for the
   whole group in the steps below and the others lose to that sample's
   final winner.
2. Groups the candidates by band key.  A band key shared by more than
   `max_group_size` candidates (counted by a combiner first) is split into
   sub-buckets of about `max_group_size` by a hash of the sample key, so no
   group is unbounded.  Pairs that fall into different sub-buckets are not
   compared there: recall can drop for that band key, and the report counts
   such "hot band keys".
3. Verifies every pair within a group with the matcher, and links each
   connected set of verified pairs as a star to its minimum node.
4. Finds connected components of all links with the alternating large-star /
   small-star algorithm (Kiveris et al., "Connected Components in MapReduce
   and Beyond", 2014): each step is one GroupByKey over edges, never adds
   edges, and leaves every component as a star around its minimum node,
   typically in O(log n) steps.  Beam graphs are static, so the number of
   rounds is fixed (`rounds`).  Because nodes order by keep rank, a
   component's minimum node IS its winner.
5. Resolves: a node whose smallest neighbour is a root (has no smaller
   neighbour) loses to it.  If a component has not become a star within
   `rounds`, its nodes whose smallest neighbour is not a root are KEPT and
   counted as `unresolved`: the component is split, some duplicates survive,
   but every dropped sample names a kept one.

Clusters are connected components, so they can chain: A~B and B~C put A and C
together even when A and C are not near each other; `duplicate_of` names the
cluster's winner, which may be farther than the threshold from the loser.

The in-memory `cluster_in_memory` applies the same step functions without
Beam, for tests and benchmarks.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import zlib
from collections import defaultdict
from typing import Any, Hashable, Iterable, NamedTuple, Protocol, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.dedup.groups import DropLosers

# (rank, key): a smaller node is a better sample to keep; the key breaks ties
# and makes the order total, so "the minimum" is the same on every run.
Node = tuple[float, str]
Edge = tuple[Node, Node]  # (larger node, smaller node)
BandKey = tuple[int, Hashable]  # (band index, band value)

HISTOGRAM_LIMITS = (2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
LARGEST_CLUSTERS = 10
EXAMPLE_KEYS = 5
LISTED_HOT_KEYS = 10
REJECTED = "rejected"


class Candidate(NamedTuple):
    node: Node
    fingerprint: bytes
    band_keys: tuple[BandKey, ...]
    payload: Any


class PairMatcher(Protocol):
    """Compares payloads in blocks of rows, so memory stays bounded for big groups."""

    def prepare(self, payloads: Sequence[Any]) -> Any:
        """Arrays for comparing these payloads."""

    def near_block(self, prepared: Any, start: int, stop: int) -> np.ndarray:
        """Boolean (stop - start) x n matrix: which of rows start..stop are near which payload."""


def node_key(node: Node) -> str:
    return node[1]


# ---------------------------------------------------------------- banding


def split_bits(value: int, bits: int, bands: int) -> list[int]:
    """`value`'s `bits` low bits cut into `bands` contiguous bands of near-equal width."""
    edges = [round(i * bits / bands) for i in range(bands + 1)]
    return [(value >> low) & ((1 << (high - low)) - 1) for low, high in zip(edges, edges[1:])]


def pigeonhole_band_keys(value: int, bits: int, max_distance: int, bands_per_key: int = 1) -> tuple[BandKey, ...]:
    """Band keys such that two values within Hamming `max_distance` share at least one.

    The value is cut into `max_distance + bands_per_key` bands; `d <= max_distance`
    differing bits leave at least `bands_per_key` bands equal, so the pair
    shares the key made of those bands.  One band per key (the default) gives
    `max_distance + 1` keys of `bits / (max_distance + 1)` bits each; more
    bands per key give longer keys (fewer random collisions, smaller groups) at
    the price of C(bands, bands_per_key) keys per value.
    """
    bands = split_bits(value, bits, max_distance + bands_per_key)
    combos = itertools.combinations(range(len(bands)), bands_per_key)
    return tuple((index, tuple(bands[b] for b in combo)) for index, combo in enumerate(combos))


def signature_band_keys(signature: bytes, bands: int, rows: int, item_size: int) -> tuple[BandKey, ...]:
    """MinHash LSH bands: `bands` slices of `rows` values (`item_size` bytes each)."""
    width = rows * item_size
    return tuple((i, signature[i * width : (i + 1) * width]) for i in range(bands))


def sub_bucket(key: str, band_index: int, buckets: int) -> int:
    """Stable bucket of a sample within a hot band key (crc32: not salted per process like hash())."""
    return zlib.crc32(f"{band_index}|{key}".encode()) % buckets if buckets > 1 else 0


def sub_buckets_for(count: int, max_group_size: int) -> int:
    return math.ceil(count / max_group_size)


# ---------------------------------------------------------------- groups


def near_pairs(matcher: PairMatcher, payloads: Sequence[Any], block: int = 256) -> np.ndarray:
    """(m, 2) array of index pairs i < j of near payloads."""
    if len(payloads) < 2:
        return np.empty((0, 2), dtype=np.int64)
    prepared = matcher.prepare(payloads)
    found = []
    for start in range(0, len(payloads), block):
        stop = min(start + block, len(payloads))
        i, j = np.nonzero(matcher.near_block(prepared, start, stop))
        i += start
        found.append(np.stack([i[i < j], j[i < j]], axis=1))
    return np.concatenate(found)


def star_edges(nodes: Sequence[Node], pairs: np.ndarray) -> list[Edge]:
    """Connected sets of verified pairs, each linked as a star to its minimum node.

    `nodes` must be sorted, so a set's first index is its minimum node.
    """
    if len(pairs) == 0:
        return []
    # Imported here: scipy.sparse costs every process that hashes images ~0.15 s at start-up.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(len(nodes),) * 2)
    _count, labels = connected_components(graph, directed=False)
    centre_of_label: dict[int, int] = {}
    edges = []
    for index, label in enumerate(labels.tolist()):
        centre = centre_of_label.setdefault(label, index)
        if centre != index:
            edges.append((nodes[index], nodes[centre]))
    return edges


def group_edges(records: Iterable[tuple[Node, Any]], matcher: PairMatcher) -> tuple[list[Edge], int]:
    """Verified links within one band group, and how many pairs were compared."""
    unique = dict(records)  # one record per node, in a deterministic order below
    nodes = sorted(unique)
    pairs = near_pairs(matcher, [unique[n] for n in nodes])
    return star_edges(nodes, pairs), len(nodes) * (len(nodes) - 1) // 2


# ---------------------------------------------------------------- components


def large_star(node: Node, neighbours: Iterable[Node]) -> list[Edge]:
    """Link every larger neighbour of `node` to the minimum of its neighbourhood."""
    neighbours = set(neighbours)
    smallest = min(neighbours | {node})
    return [(v, smallest) for v in neighbours if v > node]


def small_star(node: Node, smaller_neighbours: Iterable[Node]) -> list[Edge]:
    """Link `node` and its smaller neighbours to the smallest of them."""
    members = set(smaller_neighbours) | {node}
    smallest = min(members)
    return [(v, smallest) for v in members if v != smallest]


def both_directions(edge: Edge) -> list[tuple[Node, Node]]:
    return [edge, (edge[1], edge[0])]


def parent_claims(node: Node, neighbours: Iterable[Node]) -> list[tuple[Node, tuple[str, Any]]]:
    """A node's smallest neighbour is its parent; it reports whether it is a root itself."""
    parent = min(set(neighbours) | {node})
    claims = [(node, ("is_root", parent == node))]
    if parent != node:
        claims.append((parent, ("child", node)))
    return claims


def resolve_parent(parent: Node, claims: Iterable[tuple[str, Any]]) -> tuple[list[tuple[Node, Node]], int]:
    """(loser, winner) for the children of a root; children of a non-root are kept (unresolved)."""
    is_root, children = False, []
    for kind, value in claims:
        if kind == "is_root":
            is_root = value
        else:
            children.append(value)
    if is_root:
        return [(child, parent) for child in children], 0
    return [], len(children)


# ---------------------------------------------------------------- report


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


# ---------------------------------------------------------------- combiners


class MinNodeAndCount(beam.CombineFn):
    def create_accumulator(self):
        return None, 0

    def add_input(self, accumulator, node):
        best, count = accumulator
        return (node if best is None else min(best, node)), count + 1

    def merge_accumulators(self, accumulators):
        nodes, total = [], 0
        for best, count in accumulators:
            total += count
            if best is not None:
                nodes.append(best)
        return (min(nodes) if nodes else None), total

    def extract_output(self, accumulator):
        return accumulator


# ---------------------------------------------------------------- Beam


def _split_hot_fingerprint(candidate: Candidate, hot_representatives: dict):
    representative = hot_representatives.get(candidate.fingerprint)
    if representative is None or representative == candidate.node:
        yield candidate
    else:
        yield beam.pvalue.TaggedOutput("collapsed", (node_key(candidate.node), representative))


def band_records(candidate: Candidate, hot_bands: dict, max_group_size: int):
    """((band key, sub-bucket), (node, payload)) for each band key; hot ones split by sample key."""
    record = (candidate.node, candidate.payload)
    for band_key in candidate.band_keys:
        count = hot_bands.get(band_key)
        buckets = sub_buckets_for(count, max_group_size) if count else 1
        bucket = sub_bucket(node_key(candidate.node), band_key[0], buckets)
        yield (band_key, bucket), record


class _LinkGroup(beam.DoFn):
    def __init__(self, matcher: PairMatcher, stage: str):
        self._matcher = matcher
        self._pairs = Metrics.counter(stage, "pairs_compared")

    def process(self, element):
        _key, records = element
        edges, compared = group_edges(records, self._matcher)
        if compared:
            self._pairs.inc(compared)
            yield beam.pvalue.TaggedOutput("facts", ("pairs", compared))
        yield from edges


class _ComponentRound(beam.PTransform):
    """One large-star then one small-star step: two GroupByKeys over edges."""

    def expand(self, edges):
        larger = (
            edges
            | "BothWays" >> beam.FlatMap(both_directions)
            | "ByNode" >> beam.GroupByKey()
            | "LargeStar" >> beam.FlatMapTuple(large_star)
        )
        return (
            larger
            | "ByLargerNode" >> beam.GroupByKey()  # edges are (larger, smaller)
            | "SmallStar" >> beam.FlatMapTuple(small_star)
        )


class _Resolve(beam.PTransform):
    """Edges -> (loser node, winner node), plus ("unresolved", n) facts."""

    def expand(self, edges):
        def resolve(parent, claims):
            losers, unresolved = resolve_parent(parent, claims)
            if unresolved:
                yield beam.pvalue.TaggedOutput("facts", ("unresolved", unresolved))
            yield from losers

        return (
            edges
            | "BothWays" >> beam.FlatMap(both_directions)
            | "ByNode" >> beam.GroupByKey()
            | "ClaimParents" >> beam.FlatMapTuple(parent_claims)
            | "ByParent" >> beam.GroupByKey()
            | "Resolve" >> beam.FlatMapTuple(resolve).with_outputs("facts", main="losers")
        )


class NearDuplicateClusters(beam.PTransform):
    """PCollection[Candidate] -> {"losers": (loser key, winner key), "facts": report facts}.

    Combine the facts with `DedupReportFn` (see `ClusterReport`).
    """

    def __init__(self, matcher: PairMatcher, stage: str, max_group_size: int, rounds: int):
        super().__init__()
        if max_group_size < 2:
            raise ValueError(f"max_group_size must be at least 2, got {max_group_size}")
        self._matcher, self._stage = matcher, stage
        self._max_group_size, self._rounds = max_group_size, rounds

    def expand(self, candidates):
        limit = self._max_group_size
        fingerprints = (
            candidates
            | "NodeByFingerprint" >> beam.Map(lambda c: (c.fingerprint, c.node))
            | "CountFingerprints" >> beam.CombinePerKey(MinNodeAndCount())
            | "HotFingerprints" >> beam.Filter(lambda kv: kv[1][1] > limit)
        )
        hot_representatives = fingerprints | "Representative" >> beam.MapTuple(lambda fp, stats: (fp, stats[0]))
        split = candidates | "CollapseHot" >> beam.FlatMap(
            _split_hot_fingerprint, beam.pvalue.AsDict(hot_representatives)
        ).with_outputs("collapsed", main="open")

        hot_bands = (
            split.open
            | "BandKeys" >> beam.FlatMap(lambda c: c.band_keys)
            | "CountBandKeys" >> beam.combiners.Count.PerElement()
            | "HotBandKeys" >> beam.Filter(lambda kv: kv[1] > limit)
        )
        linked = (
            split.open
            | "BandRecords" >> beam.FlatMap(band_records, beam.pvalue.AsDict(hot_bands), limit)
            | "GroupByBand" >> beam.GroupByKey()
            | "LinkGroups" >> beam.ParDo(_LinkGroup(self._matcher, self._stage)).with_outputs("facts", main="edges")
        )
        edges = linked.edges
        for round_index in range(self._rounds):
            edges = edges | f"Components{round_index}" >> _ComponentRound()
        resolved = edges | "Resolve" >> _Resolve()

        collapsed_losers = self._collapsed_losers(split.collapsed, hot_representatives, resolved.losers)
        node_losers = resolved.losers | "LoserKeys" >> beam.MapTuple(
            lambda loser, winner: (node_key(loser), node_key(winner))
        )
        losers = (node_losers, collapsed_losers) | "AllLosers" >> beam.Flatten()

        facts = [
            # One fact per candidate, summed by the report's combine: a separate count would add two Beam stages.
            candidates | "CandidateFacts" >> beam.Map(lambda _candidate: ("candidates", 1)),
            linked.facts,
            resolved.facts,
            losers | "ClusterFacts" >> _ClusterFacts(),
            fingerprints | "HotFingerprintFacts" >> beam.MapTuple(
                lambda fp, stats: ("hot_fingerprint", stats[1], fp.hex()[:32], node_key(stats[0]))
            ),
            hot_bands | "HotBandFacts" >> beam.MapTuple(
                lambda band_key, count: ("hot_band", count, describe_band_key(band_key), sub_buckets_for(count, limit))
            ),
        ]
        return {"losers": losers, "facts": facts | "AllFacts" >> beam.Flatten()}

    @staticmethod
    def _collapsed_losers(collapsed, hot_representatives, node_losers):
        """Samples of a hot fingerprint lose to their representative's winner (or to it, if it is kept)."""
        representative_nodes = hot_representatives | "RepresentativeNodes" >> beam.MapTuple(
            lambda _fp, node: (node, True)
        )
        representative_winners = node_losers | "RepresentativeWinners" >> beam.Filter(
            lambda loser_winner, reps: loser_winner[0] in reps, beam.pvalue.AsDict(representative_nodes)
        )

        def winner_of(key_and_rep, winners):
            key, representative = key_and_rep
            return key, node_key(winners.get(representative, representative))

        return collapsed | "CollapsedWinners" >> beam.Map(winner_of, beam.pvalue.AsDict(representative_winners))


class _ClusterFacts(beam.PTransform):
    def expand(self, losers):
        return (
            losers
            | "ByWinner" >> beam.MapTuple(lambda loser, winner: (winner, loser))
            | "SizePerWinner" >> beam.CombinePerKey(ClusterSizeFn())
            | "Fact" >> beam.MapTuple(lambda winner, stats: ("cluster", winner, stats[0] + 1, tuple(stats[1])))
        )


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


# ---------------------------------------------------------------- in memory


def cluster_in_memory(
    candidates: Iterable[Candidate], matcher: PairMatcher, max_group_size: int, rounds: int
) -> tuple[dict[str, str], int]:
    """The same steps as `NearDuplicateClusters`, without Beam: ({loser key: winner key}, unresolved)."""
    candidates = list(candidates)
    by_fingerprint: dict[bytes, list[Node]] = defaultdict(list)
    for c in candidates:
        by_fingerprint[c.fingerprint].append(c.node)
    hot = {fp: min(nodes) for fp, nodes in by_fingerprint.items() if len(nodes) > max_group_size}
    open_candidates = [c for c in candidates if hot.get(c.fingerprint, c.node) == c.node]
    band_counts: dict[BandKey, int] = defaultdict(int)
    for c in open_candidates:
        for band_key in c.band_keys:
            band_counts[band_key] += 1
    hot_bands = {k: n for k, n in band_counts.items() if n > max_group_size}
    groups: dict[Any, list] = defaultdict(list)
    for c in open_candidates:
        for group_key, record in band_records(c, hot_bands, max_group_size):
            groups[group_key].append(record)
    edges = {edge for records in groups.values() for edge in group_edges(records, matcher)[0]}
    edges = connected_component_edges(edges, rounds)
    winners, unresolved = resolve_edges(edges)
    losers = {node_key(loser): node_key(winner) for loser, winner in winners.items()}
    for c in candidates:
        representative = hot.get(c.fingerprint, c.node)
        if representative != c.node:
            losers[node_key(c.node)] = node_key(winners.get(representative, representative))
    return losers, unresolved


def connected_component_edges(edges: Iterable[Edge], rounds: int) -> set[Edge]:
    edges = set(edges)
    for _ in range(rounds):
        neighbours = group_pairs(pair for edge in edges for pair in both_directions(edge))
        edges = {e for node, ns in neighbours.items() for e in large_star(node, ns)}
        smaller = group_pairs(edges)
        edges = {e for node, ns in smaller.items() for e in small_star(node, ns)}
    return edges


def resolve_edges(edges: Iterable[Edge]) -> tuple[dict[Node, Node], int]:
    neighbours = group_pairs(pair for edge in edges for pair in both_directions(edge))
    claims = group_pairs(claim for node, ns in neighbours.items() for claim in parent_claims(node, ns))
    winners, unresolved = {}, 0
    for parent, parent_claims_ in claims.items():
        losers, count = resolve_parent(parent, parent_claims_)
        winners.update(losers)
        unresolved += count
    return winners, unresolved


def group_pairs(pairs: Iterable[tuple[Any, Any]]) -> dict[Any, list]:
    grouped: dict[Any, list] = defaultdict(list)
    for key, value in pairs:
        grouped[key].append(value)
    return grouped


# ---------------------------------------------------------------- the stage


def _candidates_of(sample, stage) -> list[Candidate]:
    candidate = stage.candidate(sample)
    return [] if candidate is None else [candidate]


class NearDuplicateStage(beam.PTransform):
    """prepare -> candidates -> clusters -> drop losers, for a near-duplicate DatasetStage.

    `prepare` is a DoFn that adds the stage's fields to a sample or rejects it
    (tag "rejected").  The stage provides `name`, `params` (with
    `max_group_size` and `component_rounds`), `candidate(sample)` (None: the
    sample is not compared, and stays) and `matcher()`.  Output: {"kept", "rejected", "report"}; losers are rejected
    with `reason` and `fields["duplicate_of"]` = the kept sample's key.
    """

    def __init__(self, stage: Any, reason: str, prepare: beam.DoFn):
        super().__init__()
        self._stage, self._reason, self._prepare = stage, reason, prepare

    def expand(self, samples):
        stage, params = self._stage, self._stage.params
        prepared = samples | "Prepare" >> beam.ParDo(self._prepare).with_outputs(REJECTED, main="samples")
        clusters = (
            prepared.samples
            | "Candidates" >> beam.FlatMap(_candidates_of, stage)
            | "Cluster"
            >> NearDuplicateClusters(stage.matcher(), stage.name, params.max_group_size, params.component_rounds)
        )
        losers = clusters["losers"] | "LoserInfo" >> beam.MapTuple(
            lambda loser, winner: (loser, {"duplicate_of": winner})
        )
        result = prepared.samples | "DropLosers" >> DropLosers(stage.name, self._reason, losers)
        rejected = (result["rejected"], prepared[REJECTED]) | "AllRejected" >> beam.Flatten()
        report = clusters["facts"] | "Report" >> ClusterReport(dataclasses.asdict(params))
        return {"kept": result["kept"], "rejected": rejected, "report": report}
