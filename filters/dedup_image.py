"""Near-duplicate image removal across the whole dataset by perceptual hash.

Two images are near-duplicates when their signatures (pHash, optional second
hash, 2x2 colour grid: `pipeline.dedup.image_signatures`) are within
`max_distance` bits (and `second_max_distance` for the second hash; low-detail
images must also agree in colour).

Hashes are computed on the resized image (so with `border` padding), so all
samples are compared like for like, in the download thread while the image
is at hand (`fields_from_image`), before any stage edits pixels (face_blur).

Candidate pairs come from pigeonhole banding (`pipeline.dedup.bands.pigeonhole_band_keys`):
the hash is cut into `max_distance + bands_per_key` bands, and two hashes
within `max_distance` bits share at least one band key, so no pair within
the threshold is missed (except in sub-bucketed hot band keys, reported).
With one band per key, a band has 64 / (max_distance + 1) bits, so random
hashes collide in groups of about N / 2^(64 / (max_distance + 1)) samples:
~200 per group for N = 100k at max_distance 6.  For tens of millions of
samples use `bands_per_key: 2` (28 keys of ~16 bits at distance 6) or 3, or
groups grow past `max_group_size` and get sub-bucketed (recall drops).
Clustering, hot keys and the keep policy: see `pipeline.dedup.cluster_transforms`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import apache_beam as beam
from PIL import Image

from pipeline.core.stage import DatasetStage, ImageFields, Needs
from pipeline.dedup.bands import Candidate, pigeonhole_band_keys
from pipeline.dedup.cluster_transforms import NearDuplicateStage
from pipeline.dedup.groups import check_range, keep_rank
from pipeline.dedup.image_signatures import HASH_BITS, HammingMatcher, UnreadableImage, sample_signature, store_signature
from pipeline.core.registry import register
from pipeline.core.records import REJECTED, Sample


class _HashImages(beam.DoFn):
    def __init__(self, stage: str, second_hash: str):
        self._stage, self._second_hash = stage, second_hash

    def process(self, sample: Sample):
        try:
            sample_signature(sample, self._second_hash)
        except UnreadableImage:
            yield beam.pvalue.TaggedOutput(REJECTED, sample.reject(self._stage, "unreadable_image"))
            return
        yield sample


@register
class ImageDedup(DatasetStage, ImageFields):
    name = "dedup_image"
    NEEDS = Needs(image_fields=True)
    report_section = "dedup"

    @dataclass(frozen=True)
    class Params:
        max_distance: int = 6  # pHash bits; from benchmarks/dedup_eval.py
        second_hash: Literal["none", "dhash", "whash"] = "none"  # a second hash that must agree too
        second_max_distance: int = 12  # bits, for second_hash
        keep: Literal["first", "largest", "clip_score"] = "first"  # the one kept: first row, most pixels, top clip_score
        max_group_size: int = 1000  # samples per compared group; larger band keys are sub-bucketed
        bands_per_key: int = 1  # 2 or 3 for very large datasets: see the module doc
        component_rounds: int = 6  # large-star + small-star rounds; 6 resolves chains of ~60

        def __post_init__(self) -> None:
            check_range("dedup_image.max_distance", self.max_distance, 0, 31)
            check_range("dedup_image.second_max_distance", self.second_max_distance, 0, 63)
            check_range("dedup_image.max_group_size", self.max_group_size, 2, 10**7)
            check_range("dedup_image.bands_per_key", self.bands_per_key, 1, 4)
            check_range("dedup_image.component_rounds", self.component_rounds, 1, 64)

    def fields_from_image(self, sample: Sample, pixels: Image.Image | None = None) -> None:
        store_signature(sample, self.params.second_hash, pixels)  # no fields: rejected in this stage's place

    def matcher(self) -> HammingMatcher:
        second = self.params.second_max_distance if self.params.second_hash != "none" else None
        return HammingMatcher(self.params.max_distance, second)

    def candidate(self, sample: Sample) -> Candidate:
        p = self.params
        signature = sample_signature(sample, p.second_hash)
        return Candidate(
            node=keep_rank(sample, p.keep),
            fingerprint=signature.fingerprint(),
            band_keys=pigeonhole_band_keys(signature.phash, HASH_BITS, p.max_distance, p.bands_per_key),
            payload=signature.payload(),
        )

    def transform(self):
        return NearDuplicateStage(self, "near_duplicate", _HashImages(self.name, self.params.second_hash))
