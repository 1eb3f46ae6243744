"""A `SampleMatcher` for `curate takedown` from known-bad hash lists (the `hashlist` stage's lists).

Per metadata row: the row's `sha256`, and its `md5` and `pdq`/`pdq_quality`
when the dataset was built with the `hashlist` stage (computed from the
original download).  Rows without a PDQ get one from the stored image
(`match_image`): that image is the resized output, so with `center_crop` it
can sit farther from the original's hash than a download would.

The rule text names the list, the kind and the distance, never the hash, so
neither the rejects nor the removal manifest repeat a list's contents.

    from pipeline.tools.takedown import takedown
    takedown("out/", "empty-optout.txt", matcher=HashListMatcher.of(("bad.txt",)))  # in place

(`curate takedown --hashlist` is not wired yet: pipeline/tools/takedown.py's
command line takes only `--optout`.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from filters.hashlist import HashLists, load_hash_lists, pdq_of_bytes

REASON = "hashlist"
MAX_PIXELS = 89_478_485


@dataclass
class HashListMatcher:
    lists: HashLists
    min_quality: int = 50
    reason: str = REASON

    @classmethod
    def of(cls, paths: tuple[str, ...], max_distance: int = 31, min_quality: int = 50) -> "HashListMatcher":
        return cls(load_hash_lists(tuple(paths), max_distance), min_quality)

    @property
    def needs_images(self) -> bool:
        return len(self.lists.pdq) > 0

    def match_row(self, row: dict[str, Any]) -> str | None:
        return self._rule(row, row)

    def match_image(self, row: dict[str, Any], image: bytes) -> str | None:
        if row.get("pdq"):
            return None  # already compared in match_row, from the original download
        pdq = pdq_of_bytes(image, MAX_PIXELS)
        if pdq is None:
            return None  # an undecodable stored image cannot be compared
        return self._rule({"pdq": pdq[0], "pdq_quality": pdq[1]}, row)

    def _rule(self, fields: dict[str, Any], row: dict[str, Any]) -> str | None:
        found = self.lists.match(fields, row.get("sha256"), self.min_quality)
        if found is None:
            return None
        kind, name, distance = found
        return f"{name} ({kind}, distance {distance})"
