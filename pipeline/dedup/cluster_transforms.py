"""Near-duplicate clustering as Beam shuffles, shared by the dedup stages.

A stage turns each sample into a `Candidate` (`pipeline.dedup.bands`: its
keep-rank node, fingerprint, band keys and a payload a `PairMatcher`
compares).  Images never enter these shuffles.  `NearDuplicateClusters` then:

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

The step functions are in `pipeline.dedup.clustering` (whose in-memory
`cluster_in_memory` applies them without Beam, for tests and benchmarks), the
report's combine in `pipeline.dedup.cluster_report`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.dedup.bands import Candidate, PairMatcher, band_records, node_key, sub_buckets_for
from pipeline.dedup.cluster_report import ClusterReport, ClusterSizeFn, describe_band_key
from pipeline.dedup.clustering import both_directions, group_edges, large_star, parent_claims, resolve_parent, small_star
from pipeline.dedup.groups import DropLosers
from pipeline.core.records import REJECTED



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
