"""The clustering's steps as pure functions, shared by the Beam transforms and `cluster_in_memory`.

Within a band group, verified near pairs are linked as stars (`group_edges`);
connected components of all links are found with the alternating large-star
/ small-star algorithm (Kiveris et al., "Connected Components in MapReduce and
Beyond", 2014): each step groups edges by node, never adds edges, and leaves
every component as a star around its minimum node, typically in O(log n)
steps.  Because nodes order by keep rank, a component's minimum node IS its
winner.  `resolve_parent` then names each loser's winner; a component not yet
a star after the fixed number of rounds keeps its unresolved nodes.

`cluster_in_memory` applies the same steps without Beam, for tests and
benchmarks; `pipeline.dedup.cluster_transforms` runs them as shuffles.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from pipeline.dedup.bands import BandKey, Candidate, Node, PairMatcher, band_records, node_key

Edge = tuple[Node, Node]  # (larger node, smaller node)


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
