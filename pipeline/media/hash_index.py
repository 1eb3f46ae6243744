"""Lookup of 256-bit PDQ hashes within a Hamming distance, by multi-index hashing.

Multi-index hashing (Norouzi, Punjani and Fleet, 2012): the 256 bits are cut
into CHUNKS chunks of CHUNK_BITS bits.  If two hashes differ in at most d
bits, by the pigeonhole principle some chunk differs in at most
floor(d / CHUNKS) bits.  So a query looks up, in each chunk's table, its own
chunk value and every value within that many bits of it, and only the list
entries found there (the candidates) have their full distance computed.  With
16 chunks of 16 bits and d = 31 that is 16 x 17 exact lookups; a random list
of N hashes puts about N / 65536 entries under each chunk value, so a query
verifies a few hundred candidates for a million-entry list, never the list.

Each chunk's table is one sorted array of (chunk number << 16 | value) keys
with the entry numbers alongside: a lookup is a `searchsorted` over all
probes at once (about 128 MB for a million entries).
"""
from __future__ import annotations

import itertools

import numpy as np

HASH_BITS = 256
HASH_BYTES = HASH_BITS // 8
CHUNK_BITS = 16
CHUNKS = HASH_BITS // CHUNK_BITS


def hashes_from_hex(values: list[str]) -> np.ndarray:
    """N x 32 uint8 array from 64-digit hex strings."""
    return np.frombuffer(b"".join(bytes.fromhex(v) for v in values), dtype=np.uint8).reshape(len(values), HASH_BYTES)


def _chunks(hashes: np.ndarray) -> np.ndarray:
    """N x CHUNKS uint32 chunk values (big-endian 16-bit words of the hash)."""
    return hashes.view(">u2").astype(np.uint32)


def _flip_masks(radius: int) -> np.ndarray:
    """Every CHUNK_BITS-bit mask with at most `radius` bits set."""
    masks = [0]
    for count in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in itertools.combinations(range(CHUNK_BITS), count)]
    return np.array(masks, dtype=np.uint32)


class PdqIndex:
    """Finds the nearest listed hash within `max_distance` bits of a query."""

    def __init__(self, hashes: np.ndarray, max_distance: int):
        if not 0 <= max_distance < HASH_BITS:
            raise ValueError(f"max_distance must be within [0, {HASH_BITS}), got {max_distance}")
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint8).reshape(-1, HASH_BYTES)
        self.max_distance = max_distance
        self._words = self.hashes.view(np.uint64)  # N x 4, for the full distance
        self._flips = _flip_masks(max_distance // CHUNKS)
        chunk_ids = np.arange(CHUNKS, dtype=np.uint32) << CHUNK_BITS
        keys = (_chunks(self.hashes) | chunk_ids).ravel()  # entry-major: entry i's chunk j is at i * CHUNKS + j
        order = np.argsort(keys)
        self._keys = keys[order]
        self._entries = (order // CHUNKS).astype(np.int32)
        self._chunk_ids = chunk_ids

    def __len__(self) -> int:
        return len(self.hashes)

    def candidates(self, query: bytes) -> np.ndarray:
        """Entry numbers sharing a chunk within the per-chunk radius with `query` (no false negatives)."""
        chunk_values = _chunks(np.frombuffer(query, dtype=np.uint8).reshape(1, HASH_BYTES))[0]
        probes = ((chunk_values[:, None] ^ self._flips[None, :]) | self._chunk_ids[:, None]).ravel()
        starts = np.searchsorted(self._keys, probes, side="left")
        stops = np.searchsorted(self._keys, probes, side="right")
        lengths = stops - starts
        total = int(lengths.sum())
        # All ranges [start, stop) at once: each position is its range's start plus its offset in the range.
        range_starts = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        return self._entries[range_starts + np.arange(total)]  # an entry may repeat: harmless

    def nearest(self, query: bytes) -> tuple[int, int] | None:
        """(entry number, distance) of the closest listed hash within max_distance, else None."""
        found = self.candidates(query)
        if len(found) == 0:
            return None
        query_words = np.frombuffer(query, dtype=np.uint64)
        distances = np.bitwise_count(self._words[found] ^ query_words).sum(axis=1)
        best = int(distances.argmin())
        if distances[best] > self.max_distance:
            return None
        return int(found[best]), int(distances[best])
