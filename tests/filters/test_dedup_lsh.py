"""Pure-function tests of banding, pair matching and clustering (no Beam)."""
import random

import numpy as np
import pytest

from pipeline.dedup.groups import keep_rank
from pipeline.dedup.bands import Candidate, pigeonhole_band_keys, signature_band_keys, split_bits
from pipeline.dedup.cluster_report import DedupReportFn, size_bucket
from pipeline.dedup.clustering import cluster_in_memory, connected_component_edges, near_pairs, resolve_edges, star_edges
from pipeline.dedup.image_signatures import HammingMatcher
from pipeline.core.records import Sample

TEXTURED = b"\x80" * 12  # any colour grid: textured hashes ignore it


def node(key, rank=0.0):
    return (rank, key)


def flip(value, bits):
    for b in bits:
        value ^= 1 << b
    return value


def textured_hash(rng):
    """A 64-bit hash with 32 bits set, as pHash gives a textured image."""
    return sum(1 << b for b in rng.sample(range(64), 32))


# ---------------------------------------------------------------- banding


def test_split_bits_covers_every_bit_once():
    value = 0xDEADBEEFCAFEF00D
    bands = split_bits(value, 64, 7)
    widths = [round((i + 1) * 64 / 7) - round(i * 64 / 7) for i in range(7)]
    assert sorted(set(widths)) == [9, 10] and sum(widths) == 64
    rebuilt, shift = 0, 0
    for band, width in zip(bands, widths):
        rebuilt |= band << shift
        shift += width
    assert rebuilt == value


@pytest.mark.parametrize("max_distance, bands_per_key", [(0, 1), (3, 1), (6, 1), (10, 1), (6, 2), (8, 3)])
def test_pairs_within_max_distance_always_share_a_band_key(max_distance, bands_per_key):
    rng = random.Random(max_distance * 10 + bands_per_key)
    for _ in range(300):
        a = rng.getrandbits(64)
        b = flip(a, rng.sample(range(64), rng.randint(0, max_distance)))
        keys_a = set(pigeonhole_band_keys(a, 64, max_distance, bands_per_key))
        assert keys_a & set(pigeonhole_band_keys(b, 64, max_distance, bands_per_key))


def test_adversarial_flips_one_per_band_still_leave_one_band_equal():
    k = 6
    value = 0
    starts = [round(i * 64 / (k + 1)) for i in range(k + 1)]
    for untouched in range(k + 1):
        other = flip(value, [s for i, s in enumerate(starts) if i != untouched])  # k flips, one per band
        shared = set(pigeonhole_band_keys(value, 64, k)) & set(pigeonhole_band_keys(other, 64, k))
        assert [index for index, _ in shared] == [untouched]


def test_one_bit_more_than_max_distance_can_share_nothing():
    k = 3
    starts = [round(i * 64 / (k + 1)) for i in range(k + 1)]
    other = flip(0, starts)  # one flip in every band
    assert not set(pigeonhole_band_keys(0, 64, k)) & set(pigeonhole_band_keys(other, 64, k))


def test_signature_bands_slice_the_signature():
    signature = bytes(range(24))
    expected = ((0, bytes(range(8))), (1, bytes(range(8, 16))), (2, bytes(range(16, 24))))
    assert signature_band_keys(signature, 3, 2, 4) == expected


# ---------------------------------------------------------------- matching


def test_hamming_matcher_uses_the_threshold():
    rng = random.Random(1)
    base = textured_hash(rng)
    payloads = [(base, 0, TEXTURED), (flip(base, range(6)), 0, TEXTURED), (flip(base, range(7)), 0, TEXTURED)]
    pairs = {tuple(p) for p in near_pairs(HammingMatcher(6), payloads).tolist()}
    assert pairs == {(0, 1), (1, 2)}  # 0-2 are 7 bits apart


def test_second_hash_must_agree_too():
    rng = random.Random(2)
    base = textured_hash(rng)
    payloads = [(base, 0, TEXTURED), (base, (1 << 20) - 1, TEXTURED)]  # second hashes 20 bits apart
    assert len(near_pairs(HammingMatcher(6), payloads)) == 1
    assert len(near_pairs(HammingMatcher(6, second_max_distance=12), payloads)) == 0


def test_low_detail_images_must_also_agree_in_colour():
    flat = 1 << 63  # what pHash gives a flat image: a single bit
    red, yellow, red_again = bytes([250, 0, 0] * 4), bytes([250, 250, 120] * 4), bytes([240, 10, 5] * 4)
    payloads = [(flat, 0, red), (flat ^ 1, 0, yellow), (flat, 0, red_again)]
    assert near_pairs(HammingMatcher(6), payloads).tolist() == [[0, 2]]


def test_textured_images_ignore_colour():
    rng = random.Random(3)
    base = textured_hash(rng)
    payloads = [(base, 0, bytes(12)), (flip(base, [5]), 0, bytes([255] * 12))]
    assert near_pairs(HammingMatcher(6), payloads).tolist() == [[0, 1]]


def test_matcher_blocks_give_the_same_pairs_as_one_block():
    rng = random.Random(4)
    base = textured_hash(rng)
    payloads = [(flip(base, rng.sample(range(64), rng.randint(0, 9))), 0, TEXTURED) for _ in range(40)]
    whole = near_pairs(HammingMatcher(6), payloads, block=1000).tolist()
    assert whole and near_pairs(HammingMatcher(6), payloads, block=7).tolist() == whole


# ---------------------------------------------------------------- clustering


def test_star_edges_link_each_connected_set_to_its_minimum():
    nodes = [node(k) for k in "abcdef"]
    pairs = np.array([[1, 2], [0, 2], [3, 4]])
    assert sorted(star_edges(nodes, pairs)) == [(node("b"), node("a")), (node("c"), node("a")), (node("e"), node("d"))]


def union_find_winners(edges):
    parent = {}

    def root(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: root(x) for x in parent if root(x) != x}


def random_edges(seed, nodes, count):
    rng = random.Random(seed)
    edges = set()
    for _ in range(count):
        a, b = rng.sample(range(nodes), 2)
        edges.add((node(f"{max(a, b):05d}"), node(f"{min(a, b):05d}")))
    return edges


@pytest.mark.parametrize("seed", range(5))
def test_components_match_union_find_on_random_graphs(seed):
    edges = random_edges(seed, 400, 300)
    winners, unresolved = resolve_edges(connected_component_edges(edges, rounds=6))
    assert unresolved == 0
    assert winners == union_find_winners(edges)


def test_too_few_rounds_split_a_long_chain_but_never_drop_towards_a_dropped_sample():
    chain = [(node(f"{i + 1:04d}"), node(f"{i:04d}")) for i in range(200)]
    winners, unresolved = resolve_edges(connected_component_edges(chain, rounds=2))
    assert unresolved > 0
    assert not set(winners.values()) & set(winners)  # every winner is kept
    full, none_left = resolve_edges(connected_component_edges(chain, rounds=9))
    assert none_left == 0 and set(full.values()) == {node("0000")}


def test_component_winner_is_the_best_ranked_node_not_the_smallest_key():
    big = (-1000.0, "z")
    edges = [(node("b"), node("a")), (big, node("b"))]
    edges = [(max(e), min(e)) for e in edges]
    winners, _ = resolve_edges(connected_component_edges(edges, rounds=3))
    assert winners == {node("a"): big, node("b"): big}


def candidate(key, value, grid=TEXTURED, k=6):
    return Candidate(node(key), value.to_bytes(8, "big") + grid, pigeonhole_band_keys(value, 64, k), (value, 0, grid))


def test_cluster_in_memory_finds_chains_and_keeps_the_smallest_key():
    rng = random.Random(5)
    a = textured_hash(rng)
    b = flip(a, range(5))
    c = flip(b, range(5, 10))  # 10 bits from a, 5 from b: joined through b
    lone = textured_hash(rng)
    losers, unresolved = cluster_in_memory(
        [candidate("3", c), candidate("1", a), candidate("2", b), candidate("4", lone)], HammingMatcher(6), 100, 4
    )
    assert unresolved == 0
    assert losers == {"2": "1", "3": "1"}


def test_hot_fingerprint_is_one_cluster_without_pairwise_comparisons():
    blank = 1 << 63
    white = bytes([255] * 12)
    candidates = [candidate(f"{i:03d}", blank, white) for i in range(50)]
    candidates.append(candidate("999", blank ^ 1, white))  # one bit off: joins through the representative
    losers, _ = cluster_in_memory(candidates, HammingMatcher(6), max_group_size=10, rounds=3)
    assert losers == {f"{i:03d}": "000" for i in range(1, 50)} | {"999": "000"}


def test_hot_band_keys_are_sub_bucketed_so_pairs_seen_only_there_can_be_missed():
    rng = random.Random(6)
    starts = [round(i * 64 / 7) for i in range(7)]
    # 60 distinct textured hashes that all share band 0 (value 0): a hot band key at max_group_size 10.
    values = [textured_hash(rng) & ~0x1FF for _ in range(60)]
    candidates = [candidate(f"{i:03d}", v) for i, v in enumerate(values)]
    near_elsewhere = values[0] ^ (1 << 40)  # also shares five other bands
    only_hot = values[1] ^ sum(1 << s for s in starts[1:])  # 6 bits off, one in every band but band 0
    candidates += [candidate("yyy", near_elsewhere), candidate("zzz", only_hot)]
    losers, _ = cluster_in_memory(candidates, HammingMatcher(6), max_group_size=10, rounds=3)
    assert losers["yyy"] == "000"
    assert "zzz" not in losers  # its only shared band key was split into sub-buckets
    uncapped, _ = cluster_in_memory(candidates, HammingMatcher(6), max_group_size=100, rounds=3)
    assert uncapped["zzz"] == "001"


# ---------------------------------------------------------------- keep policy and report


def test_keep_rank_policies():
    small = Sample(key="001", shard_id=0, url="", original_width=10, original_height=10, fields={"clip_score": 0.3})
    large = Sample(key="002", shard_id=0, url="", original_width=100, original_height=50, fields={"clip_score": 0.2})
    unscored = Sample(key="000", shard_id=0, url="")
    assert min([small, large, unscored], key=lambda s: keep_rank(s, "first")) is unscored
    assert min([small, large, unscored], key=lambda s: keep_rank(s, "largest")) is large
    assert min([small, large, unscored], key=lambda s: keep_rank(s, "clip_score")) is small
    assert keep_rank(unscored, "clip_score")[0] == float("inf")


def test_size_buckets():
    assert [size_bucket(n) for n in (2, 3, 4, 5, 8, 9, 5000)] == ["2", "3-4", "3-4", "5-8", "5-8", "9-16", ">4096"]


def test_report_merge_does_not_depend_on_order():
    facts = [("cluster", f"k{i}", 2 + i % 7, (f"x{i}",)) for i in range(30)] + [("candidates", 2), ("candidates", 3)]
    fn = DedupReportFn()

    def fold(items):
        acc = fn.create_accumulator()
        for item in items:
            acc = fn.add_input(acc, item)
        return acc

    one = fn.extract_output(fold(facts))
    split = fn.extract_output(fn.merge_accumulators([fold(facts[::2]), fold(facts[1::2])]))
    assert one == split
    assert one["clusters"] == 30 and one["candidates"] == 5
    assert [c["size"] for c in one["largest_clusters"]][:3] == [8, 8, 8]
    assert sum(one["cluster_size_histogram"].values()) == 30
