"""Known-bad hash lists: reading them, and the hashes (MD5, SHA-256, PDQ) an image is looked up by.

Shared by the `hashlist` stage (filters/hashlist.py), which rejects listed
images in the download, and `curate takedown --hashlist`
(pipeline/tools/takedown_hashlist.py), which removes them from a built
dataset.  List format: see the stage's documentation.  PDQ lookups use
multi-index hashing (pipeline.media.hash_index).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.params import ParamError
from pipeline.media.hash_index import HASH_BYTES, PdqIndex, hashes_from_hex

DEFAULT_MAX_DISTANCE = 31  # ThreatExchange's PDQ match distance, in bits
DEFAULT_MIN_QUALITY = 50  # PDQ quality below this: the hash of a flat or tiny image is unreliable


def check_pdq_options(distance_name: str, max_distance: int, quality_name: str, min_quality: int) -> None:
    if not 0 <= max_distance <= 63:
        raise ParamError(f"{distance_name} must be within [0, 63], got {max_distance}")
    if not 0 <= min_quality <= 100:
        raise ParamError(f"{quality_name} must be within [0, 100], got {min_quality}")


PDQ_SIDE = 512
_EXACT_KINDS = {"md5": 32, "sha256": 64}


class HashListError(ValueError):
    pass


@dataclass
class HashLists:
    """Every list's hashes, by kind; `pdq_names[i]` is the list of PDQ entry i."""

    exact: dict[str, dict[bytes, str]]  # kind -> digest -> list name
    pdq: PdqIndex
    pdq_names: list[str]

    def match(self, fields: dict[str, Any], sha256: str | None, min_quality: int) -> tuple[str, str, int] | None:
        """(kind, list name, distance) of the first list entry this image matches, else None."""
        for kind, digest in (("md5", fields.get("md5")), ("sha256", sha256)):
            name = self.exact[kind].get(bytes.fromhex(digest)) if digest else None
            if name is not None:
                return kind, name, 0
        if fields.get("pdq") and fields.get("pdq_quality", 0) >= min_quality and len(self.pdq):
            found = self.pdq.nearest(bytes.fromhex(fields["pdq"]))
            if found is not None:
                return "pdq", self.pdq_names[found[0]], found[1]
        return None


def _named_paths(items: tuple[str, ...]) -> list[tuple[str, str]]:
    named = []
    for item in items:
        name, sep, path = item.partition("=")
        named.append((name, path) if sep and name and "/" not in name else (Path(item).stem, item))
    return named


def _parse_line(line: str, where: str) -> tuple[str, str] | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    token = text.replace(",", " ").replace("\t", " ").split()[0].lower()
    kind, sep, digest = token.partition(":")
    if not sep:
        kind, digest = {32: "md5", 64: "pdq"}.get(len(token), "?"), token
    expected = _EXACT_KINDS.get(kind, 64 if kind == "pdq" else None)
    if expected is None or len(digest) != expected or any(c not in "0123456789abcdef" for c in digest):
        raise HashListError(f"{where}: expected md5:, sha256: or pdq: and a hex digest, got {text[:80]!r}")
    return kind, digest


@functools.lru_cache(maxsize=2)
def load_hash_lists(items: tuple[str, ...], max_distance: int) -> HashLists:
    """Reads the list files once per process (the download and the stage share them)."""
    exact: dict[str, dict[bytes, str]] = {kind: {} for kind in _EXACT_KINDS}
    pdq_hex: list[str] = []
    pdq_names: list[str] = []
    for name, path in _named_paths(items):
        try:
            lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise HashListError(f"hash list {path!r}: cannot read it: {err}") from None
        for number, line in enumerate(lines, 1):
            parsed = _parse_line(line, f"hash list {path!r} line {number}")
            if parsed is None:
                continue
            kind, digest = parsed
            if kind == "pdq":
                pdq_hex.append(digest)
                pdq_names.append(name)
            else:
                exact[kind].setdefault(bytes.fromhex(digest), name)
    index = PdqIndex(hashes_from_hex(pdq_hex) if pdq_hex else np.zeros((0, HASH_BYTES), np.uint8), max_distance)
    return HashLists(exact, index, pdq_names)


def decode_for_pdq(data: bytes, max_pixels: int) -> Any:
    """The encoded image upright, shorter side at most PDQ_SIDE (a PIL image), or None when it cannot be decoded."""
    from pipeline.media.imaging import ImageRejected, ResizeParams, process_image

    scaled = ResizeParams(image_size=PDQ_SIDE, resize_mode="keep_ratio", resize_only_if_bigger=True,
                          encode_format="png", encode_quality=0, max_pixels=max_pixels)
    try:
        return process_image(data, scaled).pixels
    except ImageRejected:
        return None


def pdq_of_pixels(pixels: Any) -> tuple[str, int]:
    """(PDQ hex, quality) of a decoded PIL image."""
    import pdqhash

    bits, quality = pdqhash.compute(np.asarray(pixels.convert("RGB")))
    return np.packbits(bits.astype(np.uint8)).tobytes().hex(), int(quality)


def pdq_of_bytes(data: bytes, max_pixels: int) -> tuple[str, int] | None:
    """(PDQ hex, quality) of an encoded image, or None when it cannot be decoded."""
    pixels = decode_for_pdq(data, max_pixels)
    return None if pixels is None else pdq_of_pixels(pixels)


def hash_fields(data: bytes, max_pixels: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"md5": hashlib.md5(data).hexdigest()}
    pdq = pdq_of_bytes(data, max_pixels)
    if pdq is not None:
        fields["pdq"], fields["pdq_quality"] = pdq
    return fields
