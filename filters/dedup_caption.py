"""Near-duplicate caption removal across the whole dataset by MinHash LSH.

Each caption is normalised (Unicode NFKC, lower case, runs of whitespace to one
space), cut into shingles (`shingle: word` -> n-grams of \\w+ tokens,
`char` -> n-grams of characters; a text shorter than `ngram` is one
shingle) and summarised by a datasketch MinHash of `num_perm` permutations
(affine32 scheme, seed 1: signatures agree across workers and runs).
Candidate pairs share an LSH band; `bands` x `rows` are the ones datasketch's
MinHashLSH picks for `threshold` (minimising the false positive + false
negative areas), so a pair at Jaccard `threshold` is found with high
probability, not certainty.  Candidates are verified: estimated Jaccard
(share of equal MinHash values) >= `threshold`.  Samples without a caption
(or without any word character) are not compared and stay.

With the defaults (character 5-grams, 0.8), captions that differ in case,
punctuation, spacing or a few characters match; one changed word in a
50-character caption gives a Jaccard of about 0.7 and does not.  Word
shingles are stricter on short texts (a changed word alters `ngram` shingles).

`require_image_match: true` drops a sample only when its caption AND its image
are near-duplicates of the same other sample: the image test is the
dedup_image one (`pipeline.dedup.image_signatures`: pHash within
`image_max_distance`, colour grid for low-detail images).  It reuses `fields["phash"]` / `fields["colour_grid"]`
when an earlier dedup_image stage wrote them, else hashes the image here;
samples whose image cannot be read are then not compared.  With `false`
(default), a caption near-duplicate is dropped whatever its image; together
with a dedup_image stage, a sample then goes when either its image or its
caption repeats.

Clustering, hot keys and the keep policy: see `pipeline.dedup.cluster_transforms`.  The reason is
`near_duplicate_caption`, with `fields["duplicate_of"]` = the kept key.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal, Sequence

import apache_beam as beam
import numpy as np
from datasketch import MinHash, MinHashLSH

from pipeline.core.stage import DatasetStage, ImageFields, Needs
from pipeline.dedup.groups import check_range, keep_rank
from pipeline.dedup.bands import Candidate, signature_band_keys
from pipeline.dedup.cluster_transforms import NearDuplicateStage
from pipeline.dedup.image_signatures import HammingMatcher, sample_signature, store_signature
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import Sample

MINHASH_SEED = 1
MINHASH_SCHEME = "affine32"  # datasketch 2's default: uint32 values, collision-free permutations
VALUE_BYTES = 4

_TOKEN = re.compile(r"\w+")
_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def shingles(text: str, kind: str, ngram: int) -> set[str]:
    """The caption's shingles; empty when it has no token at all."""
    text = normalise(text)
    if kind == "word":
        units: Sequence[str] = _TOKEN.findall(text)
        join = " ".join
    else:
        units = text if _TOKEN.search(text) else ""
        join = "".join
    if not units:
        return set()
    if len(units) <= ngram:
        return {join(units)}
    return {join(units[i : i + ngram]) for i in range(len(units) - ngram + 1)}


@functools.cache
def _permutations(num_perm: int):
    return MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME).permutations


def minhash_signature(words: set[str], num_perm: int) -> bytes:
    minhash = MinHash(num_perm=num_perm, seed=MINHASH_SEED, permutations=_permutations(num_perm), scheme=MINHASH_SCHEME)
    minhash.update_batch([w.encode("utf-8") for w in sorted(words)])
    return minhash.hashvalues.astype(np.uint32).tobytes()


@functools.cache
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) datasketch chooses for this threshold (equal weights on both errors)."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


@dataclass(frozen=True)
class JaccardMatcher:
    """`pipeline.dedup.bands.PairMatcher` for (signature, image payload or None) payloads."""

    threshold: float
    image: HammingMatcher | None = None  # also require the images to match

    def prepare(self, payloads: Sequence[tuple[bytes, tuple | None]]):
        signatures = np.frombuffer(b"".join(p[0] for p in payloads), dtype=np.uint32).reshape(len(payloads), -1)
        images = self.image.prepare([p[1] for p in payloads]) if self.image else None
        return signatures, images

    def near_block(self, prepared, start: int, stop: int) -> np.ndarray:
        signatures, images = prepared
        similarity = (signatures[start:stop, None, :] == signatures[None, :, :]).mean(axis=2)
        near = similarity >= self.threshold
        if self.image is not None:
            near &= self.image.near_block(images, start, stop)
        return near


class _PrepareCaptions(beam.DoFn):
    """Hashes the image when the stage needs it and the download did not; never rejects."""

    def __init__(self, stage: "CaptionDedup"):
        self._stage = stage

    def process(self, sample: Sample):
        if self._stage.needs().image_fields:
            self._stage.fields_from_image(sample)
        yield sample


@register
class CaptionDedup(DatasetStage, ImageFields):
    name = "dedup_caption"
    report_section = "dedup"

    @dataclass(frozen=True)
    class Params:
        threshold: float = 0.8  # estimated Jaccard similarity of shingle sets
        num_perm: int = 128  # MinHash permutations: more estimate the similarity more closely, cost more
        shingle: Literal["word", "char"] = "char"  # n-grams of words or of characters
        ngram: int = 5  # shingle length, in words or characters
        require_image_match: bool = False  # drop only when the images are near-duplicates too
        image_max_distance: int = 6  # pHash bits, as dedup_image's max_distance
        keep: Literal["first", "largest", "clip_score"] = "first"  # the one kept: first row, most pixels, top clip_score
        max_group_size: int = 1000  # samples per compared group; larger band keys are sub-bucketed
        component_rounds: int = 6  # large-star + small-star rounds; 6 resolves chains of ~60

        def __post_init__(self) -> None:
            check_range("dedup_caption.num_perm", self.num_perm, 16, 512)
            check_range("dedup_caption.ngram", self.ngram, 1, 32)
            check_range("dedup_caption.image_max_distance", self.image_max_distance, 0, 31)
            check_range("dedup_caption.max_group_size", self.max_group_size, 2, 10**7)
            check_range("dedup_caption.component_rounds", self.component_rounds, 1, 64)
            if not 0.0 < self.threshold <= 1.0:
                raise ParamError(f"dedup_caption.threshold must be within (0, 1], got {self.threshold}")

    def __init__(self, params=None):
        super().__init__(params)

    def needs(self) -> Needs:
        # Caption-only dedup runs before the download and saves the fetches;
        # image matching and the "largest"/"clip_score" policies need it done.
        p = self.params
        return Needs(image=p.require_image_match or p.keep != "first", image_fields=p.require_image_match)

    def fields_from_image(self, sample: Sample, pixels=None) -> None:
        store_signature(sample, "none", pixels)  # no signature: `candidate` leaves the sample out

    def matcher(self) -> JaccardMatcher:
        image = HammingMatcher(self.params.image_max_distance) if self.params.require_image_match else None
        return JaccardMatcher(self.params.threshold, image)

    def candidate(self, sample: Sample) -> Candidate | None:
        p = self.params
        words = shingles(sample.caption or "", p.shingle, p.ngram)
        if not words:
            return None
        image = None
        if p.require_image_match:
            if "phash" not in sample.fields:
                return None  # unreadable image: nothing to match
            image = sample_signature(sample, "none")
        signature = minhash_signature(words, p.num_perm)
        bands, rows = lsh_bands(p.threshold, p.num_perm)
        return Candidate(
            node=keep_rank(sample, p.keep),
            fingerprint=signature + (image.fingerprint() if image else b""),
            band_keys=signature_band_keys(signature, bands, rows, VALUE_BYTES),
            payload=(signature, image.payload() if image else None),
        )

    def transform(self):
        return NearDuplicateStage(self, "near_duplicate_caption", _PrepareCaptions(self))
