"""The crawl reader's parameters and its per-file tally: what a recipe and a run's reading step need to
know of crawl files without importing the WARC/WAT and HTML machinery (pipeline/ingest/crawl.py: ~0.1 s of
a run's imports, langcodes' data most of it, that runs over URL lists never use)."""
from __future__ import annotations

import collections
from dataclasses import dataclass

from pipeline.core.params import ParamError


@dataclass(frozen=True)
class CrawlParams:
    """How image links are taken from crawl files."""

    surrounding_words: int = 0  # words of page text kept before and after each image; 0: none
    skip_empty_alt: bool = False  # drop images without a caption (default: keep, the caption stage decides)
    title_fallback: bool = False  # no alt text, or a blank one: use the image's title attribute as its caption

    def __post_init__(self) -> None:
        if self.surrounding_words < 0:
            raise ParamError(f"crawl.surrounding_words must be >= 0, got {self.surrounding_words}")


class Tally(collections.Counter):
    """What reading one crawl file found: every record and every image link counted once.

    records == sum of "record/*";  links == rows + sum of "link/*" (rows: the
    image rows yielded; WAT records that are not JSON give one error row each,
    counted as "record/malformed").  "pages_cut_at_size_cap" counts WARC pages
    read only up to MAX_PAGE_BYTES: their later images were never seen, so
    they are in no count.
    """

    def record(self, outcome: str) -> None:
        self["records"] += 1
        self[f"record/{outcome}"] += 1

    def link(self, dropped_because: str | None = None) -> None:
        self["links"] += 1
        self[f"link/{dropped_because}" if dropped_because else "rows"] += 1

    def undo_row(self, dropped_because: str) -> None:
        """A link counted as a row turned out to be dropped (the file-wide duplicate check)."""
        self["rows"] -= 1
        self[f"link/{dropped_because}"] += 1
