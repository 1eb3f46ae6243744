"""The report's second pass: what it counts over every kept and rejected row.

`Aggregates` adds each row to the histograms (whose bins the first pass,
`pipeline.tools.report.scan_ranges`, fixed), the language and domain counts,
the bias tallies and the examples of each reject reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pipeline.media.bias_terms import PERCEIVED_FIELD, split_labels
from pipeline.tools.report import Range, Row, Thumbnail, histogram_for, is_score_field, measures
from pipeline.tools.report_format import SPLITS, short_text

DOMAIN_CAPACITY = 200_000  # distinct domains remembered exactly; beyond, counts become lower bounds
EXAMPLES_PER_REASON = 5


class TopCounter:
    """Counts values; past `capacity` distinct ones the rarest half is forgotten (counts become lower bounds)."""

    def __init__(self, capacity: int = DOMAIN_CAPACITY):
        self.counts: Counter[str] = Counter()
        self.capacity = capacity
        self.approximate = False

    def add(self, value: str) -> None:
        self.counts[value] += 1
        if len(self.counts) > self.capacity:
            self.counts = Counter(dict(self.counts.most_common(self.capacity // 2)))
            self.approximate = True


def domain_of(url: str) -> str:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    return host.removeprefix("www.") or "(no host)"


@dataclass
class Example:
    key: str
    url: str
    caption: str | None
    detail: str


def example_of(row: Row) -> Example:
    notes = [f"{name}={short_text(value)}" for name, value in sorted(row.fields.items()) if is_score_field(name, value)]
    if row.fields.get("duplicate_of"):
        notes.append(f"duplicate of {row.fields['duplicate_of']}")
    width, height = row.fields.get("original_width"), row.fields.get("original_height")
    if width and height:
        notes.append(f"original {width}×{height}")
    return Example(row.key, row.url, row.caption, ", ".join(notes))


class LabelTally:
    """How many rows of each outcome carry each label (and each group/context pair)."""

    def __init__(self):
        self.rows: Counter[str] = Counter()
        self.labels: dict[str, Counter[str]] = {}

    def add(self, outcome: str, labels: list[str]) -> None:
        self.rows[outcome] += 1
        for label in labels:
            self.labels.setdefault(label, Counter())[outcome] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": dict(self.rows),
            "labels": {label: dict(counts) for label, counts in sorted(self.labels.items())},
        }


class BiasTally:
    """Caption term mentions, group x context co-occurrences and perceived labels, per outcome."""

    def __init__(self, terms):
        self.terms = terms
        self.mentions = LabelTally()
        self.pairs = LabelTally()
        self.perceived = LabelTally()

    def add(self, row: Row) -> None:
        labels = self.terms.labels(row.caption)
        groups = [label for label in labels if self.terms.is_group(label)]
        contexts = [label for label in labels if not self.terms.is_group(label)]
        self.mentions.add(row.outcome, labels)
        self.pairs.add(row.outcome, [f"{group} & {context}" for group in groups for context in contexts])
        estimates = split_labels(row.fields.get(PERCEIVED_FIELD))
        if estimates:  # rows that reached the stage with an image
            self.perceived.add(row.outcome, estimates)

    def to_json(self, terms_note: str) -> dict[str, Any]:
        perceived = self.perceived.to_json() if self.perceived.rows else None
        return {
            "terms": terms_note,
            "group_categories": list(self.terms.group_categories),
            "context_categories": list(self.terms.context_categories),
            "mentions": self.mentions.to_json(),
            "cooccurrence": self.pairs.to_json(),
            "perceived": perceived,
            "note": "Counts of caption words from the lists, not of people. Perceived attributes, when present, "
            "are zero-shot CLIP estimates of how people are presented, with the model's own biases.",
        }


class Aggregates:
    """Everything the second pass counts."""

    def __init__(self, ranges: dict[str, Range], terms):
        self.histograms = {name: histogram_for(name, value_range) for name, value_range in ranges.items()}
        self.rows = dict.fromkeys(SPLITS, 0)
        self.languages = {split: Counter() for split in SPLITS}
        self.domains = {split: TopCounter() for split in SPLITS}
        self.examples: dict[tuple[str, str], list[Example]] = {}
        self.bias = BiasTally(terms)

    def add_batch(self, rows: list[Row]) -> None:
        for row in rows:
            self.add(row)
        for histogram in self.histograms.values():
            histogram.flush()

    def add(self, row: Row) -> None:
        split = row.split
        self.rows[split] += 1
        values = measures(row)
        for name, histogram in self.histograms.items():
            histogram.add(split, values.get(name))
        if row.fields.get("lang") is not None:
            self.languages[split][str(row.fields["lang"])] += 1
        self.domains[split].add(domain_of(row.url))
        self.bias.add(row)
        if row.stage is not None:
            self._add_example(row)

    def _add_example(self, row: Row) -> None:
        examples = self.examples.setdefault((row.stage, row.reason), [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(example_of(row))


@dataclass
class Report:
    """Everything the page and the JSON files show (built by pipeline.tools.report_build.build_report)."""

    audit: dict[str, Any]
    optout: dict[str, Any]
    examples: dict[tuple[str, str], list[Example]]
    thumbnails: list[Thumbnail]
    problems: list[str] = field(default_factory=list)
    complete: bool = True
