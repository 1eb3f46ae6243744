"""What `curate takedown` removes: a `SampleMatcher` decides per sample.

A matcher sees one metadata row of a shard (`match_row`) and, if it
`needs_images`, the stored image of each row it did not match
(`match_image`); it returns the rule that matched, as text for the rejects
and the removal manifest, or None.  The opt-out list is one matcher; other
lists (hash lists of known images) can be others, with their own reject reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.media.optout.phash import phash_of_image
from pipeline.media.optout.reasons import REASON_LIST, RULE_FIELD
from pipeline.media.optout.rule_list import OptOutList


class SampleMatcher(Protocol):
    """Decides per sample whether it goes: the rule that matched (as text), or None."""

    reason: str  # the reject reason of its removals
    needs_images: bool  # match_image is called (with the stored image) for rows match_row kept
    withheld: frozenset[str]  # metadata columns a removal's reject must not repeat (a list's hashes)

    def match_row(self, row: dict[str, Any]) -> str | None: ...

    def match_image(self, row: dict[str, Any], image: bytes) -> str | None: ...

    def reject_fields(self, rule: str) -> dict[str, Any]:
        """The reject's fields naming the rule that matched."""

    def about(self) -> dict[str, Any]:
        """What the audit and the removal manifest say about the list (never its entries' hashes)."""


@dataclass
class OptOutListMatcher:
    """The opt-out list's rules: url/prefix/domain and sha256 on the row, phash on the stored image."""

    optout_list: OptOutList
    phash_distance: int = 4
    path: str = ""  # where the list was read from, for the audit
    reason: str = REASON_LIST
    withheld: frozenset[str] = frozenset()

    @property
    def needs_images(self) -> bool:
        return self.optout_list.has_phash

    def match_row(self, row: dict[str, Any]) -> str | None:
        rule = self.optout_list.match_url(row.get("url")) or self.optout_list.match_sha256(row.get("sha256"))
        return None if rule is None else str(rule)

    def match_image(self, row: dict[str, Any], image: bytes) -> str | None:
        try:
            phash = phash_of_image(image, (row.get("original_width"), row.get("original_height")))
        except (OSError, ValueError):
            return None  # an undecodable stored image cannot be compared
        match = self.optout_list.match_phash(phash, self.phash_distance)
        return f"{match.rule} (distance {match.distance})" if match else None

    def reject_fields(self, rule: str) -> dict[str, Any]:
        return {RULE_FIELD: rule}

    def about(self) -> dict[str, Any]:
        return {"list": self.path, "list_rules": self.optout_list.counts()}
