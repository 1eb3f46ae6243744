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

from dataclasses import dataclass
from typing import Any


from pipeline.core.stage import DownloadHook, Filter, Needs, StageContext
from pipeline.core.registry import register
from pipeline.media.hash_lists import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_QUALITY, check_pdq_options, hash_fields, load_hash_lists
from pipeline.core.records import KEEP, Sample, Verdict, drop

@register
class HashList(Filter, DownloadHook):
    name = "hashlist"
    NEEDS = Needs(pixels=False)

    @dataclass(frozen=True)
    class Params:
        lists: tuple[str, ...] = ()  # list files, or NAME=PATH
        max_distance: int = DEFAULT_MAX_DISTANCE  # PDQ bits
        min_quality: int = DEFAULT_MIN_QUALITY  # PDQ quality below this: no PDQ match

        def __post_init__(self) -> None:
            check_pdq_options("hashlist.max_distance", self.max_distance, "hashlist.min_quality", self.min_quality)

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
