"""Perceptual signatures of images and their near-duplicate test, shared by the image-comparing stages.

Each image gets a 64-bit pHash (imagehash.phash of the decoded output image,
in `fields["phash"]` as hex), optionally a second 64-bit opinion (dhash or
whash, in `fields["dhash"]` / `fields["whash"]`), and a 2x2 colour grid
(`fields["colour_grid"]`, 12 bytes as hex).  Two images are near-duplicates
when their pHashes differ in at most `max_distance` bits, the second hash (if
any) in at most `second_max_distance` bits, and, for low-detail images, their
colour grids agree (`near_matrix`).

Why the colour grid: pHash thresholds the DCT at its median, so an image with
almost no structure (a flat colour, a letterboxed square, a plain gradient)
gets a hash with only a few bits set, and all such images look alike to it:
a red and a yellow square are 3 bits apart.  When either hash has fewer than
`LOW_DETAIL_BITS` bits set (a textured image has 32: half the coefficients
are above the median), the pair must also have every colour-grid channel
within `COLOUR_TOLERANCE`.  Blank images of one colour still cluster.

Used by the `dedup_image`, `dedup_caption` (its image check) and
`decontaminate` stages; a signature an earlier stage stored in the sample's
fields is reused (`sample_signature`).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import imagehash
import numpy as np
from PIL import Image

from pipeline.core.records import Sample

HASH_BITS = 64
LOW_DETAIL_BITS = 16  # a pHash with fewer bits set describes a nearly flat image
COLOUR_TOLERANCE = 32  # max difference of any 2x2 colour-grid channel, 0-255
GRID_SIZE = 2
GRID_BYTES = GRID_SIZE * GRID_SIZE * 3

_SECOND_HASHES = {"dhash": imagehash.dhash, "whash": imagehash.whash}


class UnreadableImage(ValueError):
    pass


class ImageSignature(NamedTuple):
    phash: int
    second: int  # 0 when no second hash is used
    grid: bytes  # 2x2 mean colours, RGB, row by row

    def payload(self) -> tuple[int, int, bytes]:
        # A plain tuple crosses the shuffles: a NamedTuple would pickle its class path too.
        return tuple(self)

    def fingerprint(self) -> bytes:
        return self.phash.to_bytes(8, "big") + self.second.to_bytes(8, "big") + self.grid


def signature_of_image(image: Image.Image, second_hash: str) -> ImageSignature:
    second = int(str(_SECOND_HASHES[second_hash](image)), 16) if second_hash != "none" else 0
    grid = image.convert("RGB").resize((GRID_SIZE, GRID_SIZE), Image.Resampling.BOX).tobytes()
    return ImageSignature(int(str(imagehash.phash(image)), 16), second, grid)


def signature_of_bytes(data: bytes | None, second_hash: str) -> ImageSignature:
    if not data:
        raise UnreadableImage("no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return signature_of_image(image, second_hash)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImage(str(err)) from None


def sample_signature(sample: Sample, second_hash: str, pixels: Image.Image | None = None) -> ImageSignature:
    """The sample's signature: from fields an earlier step wrote, else from its decoded
    image `pixels` or its image bytes (then stored)."""
    stored = _signature_from_fields(sample.fields, second_hash)
    if stored is not None:
        return stored
    fields = sample.fields
    if pixels is not None:
        signature = signature_of_image(pixels, second_hash)
    else:
        signature = signature_of_bytes(sample.image, second_hash)
    fields["phash"] = f"{signature.phash:016x}"
    fields["colour_grid"] = signature.grid.hex()
    if second_hash != "none":
        fields[second_hash] = f"{signature.second:016x}"
    return signature


def store_signature(sample: Sample, second_hash: str, pixels: Image.Image | None = None) -> None:
    """`sample_signature` for download hooks: an unreadable image gets no fields, and its stage decides."""
    try:
        sample_signature(sample, second_hash, pixels)
    except UnreadableImage:
        pass


def _signature_from_fields(fields: dict, second_hash: str) -> ImageSignature | None:
    try:
        second = int(fields[second_hash], 16) if second_hash != "none" else 0
        grid = bytes.fromhex(fields["colour_grid"])
        signature = ImageSignature(int(fields["phash"], 16), second, grid)
    except (KeyError, TypeError, ValueError):
        return None  # absent or not ours: hash the image again
    return signature if len(grid) == GRID_BYTES and signature.phash < 2**HASH_BITS else None


@dataclass(frozen=True)
class SignatureArrays:
    """Signatures as arrays, for vectorised comparison."""

    phash: np.ndarray  # uint64
    second: np.ndarray  # uint64, zeros without a second hash
    grid: np.ndarray | None  # int16, one row of GRID_BYTES per signature; None: colours unknown

    @classmethod
    def of(cls, payloads: Sequence[tuple[int, int, bytes]]) -> "SignatureArrays":
        grid = np.frombuffer(b"".join(p[2] for p in payloads), dtype=np.uint8).reshape(len(payloads), GRID_BYTES)
        return cls(
            np.array([p[0] for p in payloads], dtype=np.uint64),
            np.array([p[1] for p in payloads], dtype=np.uint64),
            grid.astype(np.int16),
        )

    def __len__(self) -> int:
        return len(self.phash)

    def rows(self, start: int, stop: int) -> "SignatureArrays":
        grid = None if self.grid is None else self.grid[start:stop]
        return SignatureArrays(self.phash[start:stop], self.second[start:stop], grid)


def near_matrix(a: SignatureArrays, b: SignatureArrays, max_distance: int, second_max_distance: int | None = None):
    """Boolean len(a) x len(b) matrix: which pairs are near-duplicates (see the module doc)."""
    near = np.bitwise_count(a.phash[:, None] ^ b.phash[None, :]) <= max_distance
    if second_max_distance is not None:
        near &= np.bitwise_count(a.second[:, None] ^ b.second[None, :]) <= second_max_distance
    if a.grid is not None and b.grid is not None:
        low_detail = (np.bitwise_count(a.phash) < LOW_DETAIL_BITS)[:, None] | (
            np.bitwise_count(b.phash) < LOW_DETAIL_BITS
        )[None, :]
        colour_close = np.abs(a.grid[:, None, :] - b.grid[None, :, :]).max(axis=2) <= COLOUR_TOLERANCE
        near &= colour_close | ~low_detail
    return near


@dataclass(frozen=True)
class HammingMatcher:
    """`pipeline.dedup.bands.PairMatcher` for (phash, second, grid) payloads."""

    max_distance: int
    second_max_distance: int | None = None  # None: no second hash

    def prepare(self, payloads: Sequence[tuple[int, int, bytes]]) -> SignatureArrays:
        return SignatureArrays.of(payloads)

    def near_block(self, prepared: SignatureArrays, start: int, stop: int) -> np.ndarray:
        return near_matrix(prepared.rows(start, stop), prepared, self.max_distance, self.second_max_distance)
