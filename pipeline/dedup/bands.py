"""What a dedup stage hands to the clustering: candidates, their band keys, a pair matcher.

A stage turns each sample into a `Candidate`: a small record with the
sample's `node` (its rank for the keep policy, then its key), a
`fingerprint` (equal fingerprints are duplicates without looking further),
its LSH `band_keys` and a `payload` that a `PairMatcher` compares.  Two
samples are compared only if they share a band key, so the band keys decide
recall: `pigeonhole_band_keys` for Hamming distance on fixed-width hashes
(never misses a pair within the distance), `signature_band_keys` for MinHash
signatures.  A band key shared by too many candidates is split into
sub-buckets by a hash of the sample key (`band_records`).
"""
from __future__ import annotations

import itertools
import math
import zlib
from typing import Any, Hashable, NamedTuple, Protocol, Sequence

import numpy as np

# (rank, key): a smaller node is a better sample to keep; the key breaks ties
# and makes the order total, so "the minimum" is the same on every run.
Node = tuple[float, str]
BandKey = tuple[int, Hashable]  # (band index, band value)


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


def band_records(candidate: Candidate, hot_bands: dict, max_group_size: int):
    """((band key, sub-bucket), (node, payload)) for each band key; hot ones split by sample key."""
    record = (candidate.node, candidate.payload)
    for band_key in candidate.band_keys:
        count = hot_bands.get(band_key)
        buckets = sub_buckets_for(count, max_group_size) if count else 1
        bucket = sub_bucket(node_key(candidate.node), band_key[0], buckets)
        yield (band_key, bucket), record
