"""Reject images on user-supplied known-bad hash lists (MD5, SHA-256 exact; PDQ near).

Published lists of known-bad images give MD5 digests of the files and PDQ
perceptual hashes (Meta's 256-bit hash, robust to re-encoding and resizing).
For every downloaded image this stage computes, in the download thread,
right after the response arrives and before the image is decoded, resized or
stored anywhere:

* `md5` of the bytes as downloaded (the pipeline keeps their `sha256`);
* `pdq` (64 hex digits) and `pdq_quality` (0-100) of the image, decoded
  upright and scaled so its shorter side is at most 512 pixels (PDQ's
  reference tool also hashes a 512-pixel version), with the recipe's
  decompression-bomb guard; an image that cannot be decoded gets no PDQ (the
  download rejects it next).

A listed image is rejected there and then, so its bytes never reach the work
folder or a shard: reason `hashlist_md5`, `hashlist_sha256` or `hashlist_pdq`,
with `hashlist_name` (the list) and `hashlist_distance` (PDQ bits; 0 for
exact) in the reject's fields.  The hashes themselves are left out of the
reject, so neither the rejects nor the report repeat a list's contents.

PDQ matches are within `max_distance` bits (ThreatExchange's default, 31),
and only for images whose PDQ quality is at least `min_quality` (50: below it
the hash of a flat or tiny image is unreliable).  Lookups use multi-index
hashing (`pipeline.media.hash_index`), so a list of millions is never scanned.

List files (`lists`: paths, or NAME=PATH; the name defaults to the file's
stem): one hash per line, `md5:HEX`, `sha256:HEX`, `pdq:HEX`, or bare hex (32
digits: MD5; 64 digits: PDQ); anything after the hash (a comma, a quality
column) is ignored, as are blank lines and lines starting with `#`.

At the stage's own place in the recipe it checks the fields again (rows a
resumed run reused from its work folder); a row with neither hash there was
downloaded by an earlier run without this stage and is rejected as
`not_hashed` (re-run with --overwrite to hash every image).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.stage import DownloadHook, Filter, Needs, StageContext
from pipeline.media.hash_index import HASH_BYTES, PdqIndex, hashes_from_hex
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import KEEP, Sample, Verdict, drop

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


@register
class HashList(Filter, DownloadHook):
    name = "hashlist"
    NEEDS = Needs(pixels=False)

    @dataclass(frozen=True)
    class Params:
        lists: tuple[str, ...] = ()  # list files, or NAME=PATH
        max_distance: int = 31  # PDQ bits
        min_quality: int = 50  # PDQ quality below this: no PDQ match

        def __post_init__(self) -> None:
            if not 0 <= self.max_distance <= 63:
                raise ParamError(f"hashlist.max_distance must be within [0, 63], got {self.max_distance}")
            if not 0 <= self.min_quality <= 100:
                raise ParamError(f"hashlist.min_quality must be within [0, 100], got {self.min_quality}")

    def check(self) -> None:
        if not self.params.lists:
            raise ValueError("hashlist: no lists given (hashlist.lists)")
        try:
            import pdqhash  # noqa: F401  (imported in the download threads)
        except ImportError:
            raise ValueError("hashlist needs the pdqhash package (pip install pdqhash==0.2.8)") from None
        load_hash_lists(self.params.lists, self.params.max_distance)

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        self._lists = load_hash_lists(self.params.lists, self.params.max_distance)

    def _max_pixels(self) -> int:
        from pipeline.media.imaging import ResizeParams

        return (self.context.resize or ResizeParams()).max_pixels

    def check_response(self, sample: Sample, response: Any) -> Verdict:
        sample.fields.update(hash_fields(response.data, self._max_pixels()))
        return self._verdict(sample)

    def keep(self, sample: Sample) -> Verdict:
        if "md5" not in sample.fields and "pdq" not in sample.fields:
            return drop("not_hashed")
        return self._verdict(sample)

    def _verdict(self, sample: Sample) -> Verdict:
        found = self._lists.match(sample.fields, sample.sha256, self.params.min_quality)
        if found is None:
            return KEEP
        kind, list_name, distance = found
        for field in ("md5", "pdq"):
            sample.fields.pop(field, None)  # a reject must not repeat a listed hash
        sample.sha256 = None
        sample.fields["hashlist_name"], sample.fields["hashlist_distance"] = list_name, distance
        return drop(f"hashlist_{kind}")
