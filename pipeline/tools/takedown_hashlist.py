"""`curate takedown --hashlist`: remove the samples known-bad hash lists (the `hashlist` stage's lists) match.

Per metadata row: the row's `sha256`, and its `md5` and `pdq`/`pdq_quality`
when the dataset was built with the `hashlist` stage (computed from the
original download).  Rows without a PDQ get one from the stored image
(`match_image`), with the white bars of `border` resizing cut off first (as
the opt-out list's phash does): PDQ survives re-encoding and scaling, not
padding.  With `center_crop` the stored image lost part of the picture and
can sit farther from the listed hash than the download would.

The rule text (`pdq:NAME (distance D)`) names the kind, the list and the
distance, never the hash; a removal's reject carries `hashlist_name`,
`hashlist_kind` and `hashlist_distance`, and leaves out the row's `md5`,
`pdq` and `sha256`, so neither the rejects nor the removal manifest repeat a
list's contents.  List format, distance and quality floor are the stage's
(`filters/hashlist.py`).

    curate takedown --dataset out/ --hashlist iwf=lists/iwf.txt --hashlist c3p=lists/c3p.csv --in-place
    takedown("out/", matcher=HashListMatcher.of(("bad.txt",)))  # from Python
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from typing import Any

from pipeline.media.hash_lists import (DEFAULT_MAX_DISTANCE, DEFAULT_MIN_QUALITY, HashLists, check_pdq_options,
                                       decode_for_pdq, load_hash_lists, pdq_of_pixels)
from pipeline.media.optout.phash import unpadded

REASON = "hashlist"
MAX_PIXELS = 89_478_485
_RULE = re.compile(r"(?P<kind>md5|sha256|pdq):(?P<name>.*) \(distance (?P<distance>\d+)\)")

EPILOG = f"""\
Hash lists (--hashlist NAME=PATH, repeatable; NAME defaults to the file's stem):
the `hashlist` stage's list files, one hash per line ('#' comments):
  md5:<32 hex>   or bare 32 hex       the original downloaded bytes (what published lists give)
  sha256:<64 hex>                     the original downloaded bytes
  pdq:<64 hex>   or bare 64 hex       Meta's PDQ, within --pdq-distance bits (default {DEFAULT_MAX_DISTANCE})
Anything after the hash on a line is ignored.  A row matches on its md5, sha256
and pdq columns; a row without a pdq (built without the hashlist stage) is
hashed from its stored image, border padding cut off.  Rows whose PDQ quality
is below --pdq-min-quality (default {DEFAULT_MIN_QUALITY}) never match by PDQ.
Removals get reason `hashlist`, with hashlist_name, hashlist_kind and
hashlist_distance in the reject's fields; no hash is written to the rejects,
the audit or the manifest.  --optout and --hashlist go in two takedowns.
"""


@dataclass
class HashListMatcher:
    lists: HashLists
    min_quality: int = DEFAULT_MIN_QUALITY
    items: tuple[str, ...] = ()  # the NAME=PATH items the lists were read from, for the audit
    reason: str = REASON
    withheld: frozenset[str] = frozenset({"md5", "pdq", "sha256"})

    @classmethod
    def of(cls, items: tuple[str, ...], max_distance: int = DEFAULT_MAX_DISTANCE,
           min_quality: int = DEFAULT_MIN_QUALITY) -> "HashListMatcher":
        """Lists read now, from the files as they are (not the stage's per-process cache: a list may have been updated)."""
        check_pdq_options("--pdq-distance", max_distance, "--pdq-min-quality", min_quality)
        return cls(load_hash_lists.__wrapped__(tuple(items), max_distance), min_quality, tuple(items))

    @property
    def needs_images(self) -> bool:
        return len(self.lists.pdq) > 0

    def match_row(self, row: dict[str, Any]) -> str | None:
        return self._rule(row, row)

    def match_image(self, row: dict[str, Any], image: bytes) -> str | None:
        if row.get("pdq"):
            return None  # already compared in match_row, from the original download
        pixels = decode_for_pdq(image, MAX_PIXELS)
        if pixels is None:
            return None  # an undecodable stored image cannot be compared
        pdq, quality = pdq_of_pixels(unpadded(pixels, (row.get("original_width"), row.get("original_height"))))
        return self._rule({"pdq": pdq, "pdq_quality": quality}, row)

    def _rule(self, fields: dict[str, Any], row: dict[str, Any]) -> str | None:
        found = self.lists.match(fields, row.get("sha256"), self.min_quality)
        if found is None:
            return None
        kind, name, distance = found
        return f"{kind}:{name} (distance {distance})"

    def reject_fields(self, rule: str) -> dict[str, Any]:
        parts = _RULE.fullmatch(rule)
        return {"hashlist_name": parts["name"], "hashlist_kind": parts["kind"],
                "hashlist_distance": int(parts["distance"])}

    def about(self) -> dict[str, Any]:
        entries: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for kind, names in self.lists.exact.items():
            for name in names.values():
                entries[name][kind] += 1
        for name in self.lists.pdq_names:
            entries[name]["pdq"] += 1
        return {"hashlists": list(self.items), "hashlist_entries": {name: dict(c) for name, c in entries.items()},
                "pdq_max_distance": self.lists.pdq.max_distance, "pdq_min_quality": self.min_quality}


def add_hashlist_arguments(parser, lists) -> None:
    """--hashlist into the `lists` group (one of --optout, --hashlist), and its PDQ options."""
    lists.add_argument("--hashlist", action="append", metavar="NAME=PATH",
                       help="a known-bad hash list (the hashlist stage's format; repeatable)")
    parser.add_argument("--pdq-distance", type=int, default=DEFAULT_MAX_DISTANCE, metavar="BITS",
                        help=f"max Hamming distance (of 256 bits) for PDQ matches (default: {DEFAULT_MAX_DISTANCE}, "
                        "as the hashlist stage)")
    parser.add_argument("--pdq-min-quality", type=int, default=DEFAULT_MIN_QUALITY, metavar="Q",
                        help=f"rows whose PDQ quality is below Q never match by PDQ (default: {DEFAULT_MIN_QUALITY})")


def matcher_of_args(args) -> HashListMatcher | None:
    """The hash-list matcher the command line asks for, or None (an opt-out list takedown)."""
    if not args.hashlist:
        return None
    return HashListMatcher.of(tuple(args.hashlist), args.pdq_distance, args.pdq_min_quality)
