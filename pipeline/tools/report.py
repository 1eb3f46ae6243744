"""The audit report: distributions of a finished output, as JSON and as one HTML page.

`write_reports(DIR)` reads an output folder and writes

* `report/audit.json`: the run's audit with its counts untouched, plus
  `funnel`, `distributions` (histograms of every numeric `*_score` field and
  of original image size, aspect ratio and caption length, each split kept vs
  rejected; language shares; top domains), `optout` and `bias`;
* `report/optout.json`: rows dropped by opt-out rules, by reason, rule kind
  and domain (`pipeline.media.optout_rules.optout_report`);
* `report/audit.html`: one self-contained page (inline SVG charts, base64
  thumbnails, no script or network) with the same content and examples.

It streams: shard metadata and rejects are read in batches of rows, twice
(the first pass finds each histogram's range), and only the first shards'
images are opened, for the thumbnails.  Paths may be local or on any Beam
filesystem (gs://...).  `curate report DIR` regenerates all three files.

This module reads the output and builds the numbers; `pipeline.tools.report_html`
renders the page (its charts are drawn by `pipeline.tools.report_plots`), and
`pipeline.tools.report_format` holds the split names, limits and number formats
all three share.
"""
from __future__ import annotations

import base64
import datetime
import io
import json
import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from filters.bias_audit import PERCEIVED_FIELD, TermsError, load_terms, split_labels
from pipeline.core import layout
from pipeline.engine import built_dataset
from pipeline.engine.audit import write_json
from pipeline.media.optout_rules import OPTOUT_REASONS, optout_report
from pipeline.tools.report_format import (
    KEPT,
    REJECTED,
    SPLITS,
    THUMBNAIL_PIXELS,
    TOP_DOMAINS,
    finite_number,
    short_text,
)
from pipeline.tools.report_html import render_html
from pipeline.engine.writers import AtomicFile

HISTOGRAM_BINS = 30
RESERVOIR_SIZE = 20_000  # values per measure kept by the first pass to find a long tail
TAIL_QUANTILE = 0.995
OPTOUT_TOP_DOMAINS = 100  # in optout.json; audit.json and the page show TOP_DOMAINS
DOMAIN_CAPACITY = 200_000  # distinct domains remembered exactly; beyond, counts become lower bounds
EXAMPLES_PER_REASON = 5
THUMBNAILS = 12

# Recipe parameters drawn as markers on a measure's histogram: (stage, parameter).
THRESHOLD_PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "clip_score": (("clip_score", "threshold"),),
    "nsfw_score": (("nsfw", "threshold"),),
    "watermark_score": (("watermark", "threshold"),),
    "aesthetic_score": (("aesthetic", "threshold"),),
    "lang_score": (("language", "min_score"),),
    "original_short_side": (("resolution", "min_side"),),
    "original_long_side": (("resolution", "max_side"),),
    "aspect_ratio": (("resolution", "max_aspect_ratio"),),
    "caption_chars": (("caption", "min_chars"), ("caption", "max_chars")),
    "caption_words": (("caption", "min_words"),),
}
IMAGE_MEASURES = ("original_short_side", "original_long_side", "aspect_ratio")
LOG_MEASURES = ("aspect_ratio",)  # 1:4 and 4:1 are equally far from square
# Unbounded measures whose rare huge values (a 20,000 px panorama, a keyword-stuffed
# caption) would squash every other bar: their far tail is folded into the last bin.
# Scores are never folded: their tail is what thresholds are about.
TAIL_FOLDED_MEASURES = ("original_short_side", "original_long_side", "caption_chars", "caption_words")
CAPTION_MEASURES = ("caption_chars", "caption_words")


class ReportError(ValueError):
    """The folder cannot be reported on (no audit.json, unreadable audit)."""


# ---------------------------------------------------------------- reading rows


@dataclass
class Row:
    """One kept or rejected sample, without its image."""

    key: str
    url: str
    caption: str | None
    stage: str | None  # the stage that dropped it; None when kept
    reason: str | None
    fields: dict[str, Any]

    @property
    def split(self) -> str:
        return KEPT if self.stage is None else REJECTED

    @property
    def outcome(self) -> str:
        """KEPT, or the name of the stage that dropped the row."""
        return self.stage or KEPT


def kept_rows(output_dir: str, problems: list[str]) -> Iterator[list[Row]]:
    for batch in built_dataset.kept_batches(output_dir, problems, built_dataset.scalar_columns):
        yield [_kept_row(values) for values in batch]


def _kept_row(values: dict[str, Any]) -> Row:
    return Row(str(values.get("key")), values.get("url") or "", values.get("caption"), None, None, values)


def rejected_rows(output_dir: str, problems: list[str]) -> Iterator[list[Row]]:
    for batch in built_dataset.reject_batches(output_dir, problems):
        yield [_rejected_row(values) for values in batch]


def _rejected_row(values: dict[str, Any]) -> Row:
    known = _json_object(values.get("fields"))
    return Row(
        str(values.get("key")), values.get("url") or "", values.get("caption"),
        values.get("stage") or "unknown", values.get("reason") or "unknown", known,
    )


def _json_object(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def all_rows(output_dir: str, problems: list[str]) -> Iterator[list[Row]]:
    yield from kept_rows(output_dir, problems)
    yield from rejected_rows(output_dir, problems)


# ---------------------------------------------------------------- measures and histograms


def is_score_field(name: str, value: Any) -> bool:
    return (name == "score" or name.endswith("_score")) and finite_number(value) is not None


def measures(row: Row) -> dict[str, float | None]:
    """Every numeric quantity histogrammed for a row: its scores and derived sizes."""
    values = {name: finite_number(value) for name, value in row.fields.items() if is_score_field(name, value)}
    width, height = finite_number(row.fields.get("original_width")), finite_number(row.fields.get("original_height"))
    sized = bool(width and height)
    values["original_short_side"] = min(width, height) if sized else None
    values["original_long_side"] = max(width, height) if sized else None
    values["aspect_ratio"] = width / height if sized else None
    caption = row.caption
    values["caption_chars"] = float(len(caption)) if caption is not None else None
    values["caption_words"] = float(len(caption.split())) if caption is not None else None
    return values


@dataclass
class Range:
    """A measure's extent over all rows, from the first pass, with a seeded reservoir sample for its tail."""

    low: float = math.inf
    high: float = -math.inf
    integral: bool = True
    lowest_kept: float | None = None
    seen: int = 0
    sample: list[float] = field(default_factory=list)
    _random: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def add(self, value: float, kept: bool) -> None:
        self.low, self.high = min(self.low, value), max(self.high, value)
        self.integral = self.integral and value.is_integer()
        if kept:
            self.lowest_kept = value if self.lowest_kept is None else min(self.lowest_kept, value)
        self.seen += 1
        if len(self.sample) < RESERVOIR_SIZE:
            self.sample.append(value)
        else:
            slot = self._random.randrange(self.seen)
            if slot < RESERVOIR_SIZE:
                self.sample[slot] = value

    def upper_bound(self) -> float:
        """The maximum, or the 99.5th percentile when a long tail would squash the rest into a few bars."""
        # "lower": a real value, and in a small sample the second largest, so one outlier is folded.
        body = float(np.quantile(self.sample, TAIL_QUANTILE, method="lower"))
        return body if self.high - self.low > 2 * (body - self.low) else self.high

    def edges(self, log_scale: bool = False, fold_tail: bool = False, bins: int = HISTOGRAM_BINS) -> np.ndarray:
        if log_scale:
            return np.geomspace(self.low, self.high, bins + 1)
        high = self.upper_bound() if fold_tail else self.high
        if self.integral:
            # Whole-number bins, so counts of 3 words never share a bar with 4 by rounding.
            width = max(1.0, math.ceil((high - self.low + 1) / bins))
            count = int(math.ceil((high - self.low + 1) / width))
            return self.low - 0.5 + width * np.arange(count + 1)
        if high == self.low:
            return np.linspace(self.low - 0.5, high + 0.5, bins + 1)
        return np.linspace(self.low, high, bins + 1)


def scan_ranges(output_dir: str) -> dict[str, Range]:
    """First pass: each measure's range over kept and rejected rows."""
    ranges: dict[str, Range] = {}
    for batch in all_rows(output_dir, problems=[]):
        for row in batch:
            for name, value in measures(row).items():
                if value is not None:
                    if name not in ranges:
                        ranges[name] = Range()
                    ranges[name].add(value, row.stage is None)
    return ranges


class Histogram:
    """Kept and rejected counts over fixed bins.

    Rows without the measure count as missing; values beyond the last edge
    (a clipped long tail) are counted in the last bin and in `above_range`.
    """

    def __init__(self, edges: np.ndarray, log_scale: bool = False):
        self.edges, self.log_scale = edges, log_scale
        self.counts = {split: np.zeros(len(edges) - 1, dtype=np.int64) for split in SPLITS}
        self.missing = dict.fromkeys(SPLITS, 0)
        self.above_range = dict.fromkeys(SPLITS, 0)
        self._pending: dict[str, list[float]] = {split: [] for split in SPLITS}

    def add(self, split: str, value: float | None) -> None:
        if value is None:
            self.missing[split] += 1
        else:
            self._pending[split].append(value)

    def flush(self) -> None:
        for split, values in self._pending.items():
            if values:
                array = np.asarray(values)
                self.above_range[split] += int((array > self.edges[-1]).sum())
                clipped = np.clip(array, self.edges[0], self.edges[-1])
                self.counts[split] += np.histogram(clipped, bins=self.edges)[0]
                values.clear()

    def to_json(self, thresholds: list[dict]) -> dict[str, Any]:
        self.flush()
        return {
            "bins": [float(edge) for edge in self.edges],
            "scale": "log" if self.log_scale else "linear",
            KEPT: self.counts[KEPT].tolist(),
            REJECTED: self.counts[REJECTED].tolist(),
            "missing": dict(self.missing),
            "above_range": dict(self.above_range),
            "thresholds": thresholds,
        }


def histogram_for(name: str, value_range: Range) -> Histogram:
    log_scale = name in LOG_MEASURES and 0 < value_range.low < value_range.high
    return Histogram(value_range.edges(log_scale, name in TAIL_FOLDED_MEASURES), log_scale)


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


# ---------------------------------------------------------------- thresholds from the recipe


def stage_params(recipe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    for entry in recipe.get("stages") or []:
        if isinstance(entry, dict):
            for name, values in entry.items():
                params[name] = values if isinstance(values, dict) else {}
        elif isinstance(entry, str):
            params[entry] = {}
    return params


def threshold_markers(measure: str, recipe: dict[str, Any], value_range: Range | None) -> list[dict[str, Any]]:
    """The recipe's cut-offs for a measure, as {"label", "value"} markers."""
    params = stage_params(recipe)
    markers = []
    for stage, param in THRESHOLD_PARAMS.get(measure, ()):
        value = finite_number(params.get(stage, {}).get(param))
        if value:  # None or 0: the rule is off
            markers.append({"label": f"{stage}.{param}", "value": value})
            if measure == "aspect_ratio":
                markers.append({"label": f"1 / {stage}.{param}", "value": 1.0 / value})
    lowest_kept = value_range.lowest_kept if value_range else None
    for stage, values in params.items():
        # A top-fraction rule has no fixed threshold: the lowest kept score is its cut-off.
        if values.get("field") == measure and "fraction" in values and lowest_kept is not None:
            markers.append({"label": f"{stage} cut-off (lowest kept)", "value": lowest_kept})
    return markers


# ---------------------------------------------------------------- the second pass


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


# ---------------------------------------------------------------- building the JSON


def read_audit_file(output_dir: str) -> dict[str, Any]:
    path = layout.OutputLayout(output_dir).audit
    if not FileSystems.exists(path):
        raise ReportError(f"{path} does not exist: is {output_dir} the output folder of a finished `curate run`?")
    try:
        with FileSystems.open(path) as handle:
            audit = json.loads(handle.read())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: cannot read it: {err}") from None
    if not isinstance(audit, dict) or not isinstance(audit.get("counts"), dict):
        raise ReportError(f"{path}: has no 'counts': not an audit written by curate")
    return audit


def funnel(audit: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows remaining after each step, in stage_order (the order the steps ran; others last)."""
    counts = audit["counts"]
    by_stage = counts.get("rejected_by_stage", {})
    order = list(audit.get("stage_order") or [])
    order += [stage for stage in by_stage if stage not in order]
    remaining = counts.get("input", 0)
    steps = [{"stage": "input", "dropped": 0, "remaining": remaining}]
    for stage in order:
        dropped = sum(by_stage.get(stage, {}).values())
        remaining -= dropped
        steps.append({"stage": stage, "dropped": dropped, "remaining": remaining})
    return steps


def _top(counter: Counter, n: int) -> list[list]:
    return [[name, count] for name, count in counter.most_common(n)]


def distributions(aggregates: Aggregates, ranges: dict[str, Range], recipe: dict[str, Any]) -> dict[str, Any]:
    def histogram(name: str) -> dict[str, Any]:
        return aggregates.histograms[name].to_json(threshold_markers(name, recipe, ranges.get(name)))

    scores = sorted(name for name in aggregates.histograms if name not in IMAGE_MEASURES + CAPTION_MEASURES)
    has_languages = any(aggregates.languages[split] for split in SPLITS)
    return {
        "rows": dict(aggregates.rows),
        "scores": {name: histogram(name) for name in scores},
        "image": {name: histogram(name) for name in IMAGE_MEASURES if name in aggregates.histograms},
        "caption": {name: histogram(name) for name in CAPTION_MEASURES if name in aggregates.histograms},
        "languages": (
            {split: dict(aggregates.languages[split].most_common()) for split in SPLITS} if has_languages else None
        ),
        "domains": {
            **{split: _top(aggregates.domains[split].counts, TOP_DOMAINS) for split in SPLITS},
            "approximate": any(aggregates.domains[split].approximate for split in SPLITS),
        },
    }


def optout_rows(output_dir: str, problems: list[str]) -> Iterator[dict[str, Any]]:
    """Rejects rows dropped by an opt-out rule, streamed (the columns optout_report reads)."""
    def columns(schema: pa.Schema) -> list[str]:
        return [name for name in ("stage", "reason", "url", "fields") if name in schema.names]

    for batch in built_dataset.reject_batches(output_dir, problems, columns):
        yield from (row for row in batch if row.get("reason") in OPTOUT_REASONS)


def bias_terms_for(recipe: dict[str, Any]):
    """The recipe's bias_audit word list if it has one and it is readable, else the bundled one."""
    path = stage_params(recipe).get("bias_audit", {}).get("terms_path")
    if path:
        try:
            return load_terms(path), f"{path} (the recipe's bias_audit.terms_path)"
        except TermsError as err:
            terms = load_terms()
            return terms, f"bundled list {terms.source}; the recipe's terms_path could not be used: {err}"
    terms = load_terms()
    return terms, f"bundled list {terms.source}"


# ---------------------------------------------------------------- thumbnails


@dataclass
class Thumbnail:
    key: str
    caption: str | None
    data_uri: str


def thumbnail_uri(data: bytes) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=75)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def kept_thumbnails(output_dir: str, limit: int, problems: list[str]) -> list[Thumbnail]:
    """Thumbnails of the first kept samples: from the first tar shards, else from Parquet image columns."""
    thumbnails = []
    for stored in built_dataset.kept_images(output_dir, problems):
        uri = thumbnail_uri(stored.image)
        if uri:
            thumbnails.append(Thumbnail(stored.key, stored.caption, uri))
        if len(thumbnails) >= limit:
            break
    return thumbnails


# ---------------------------------------------------------------- entry points


@dataclass
class Report:
    audit: dict[str, Any]
    optout: dict[str, Any]
    examples: dict[tuple[str, str], list[Example]]
    thumbnails: list[Thumbnail]
    problems: list[str] = field(default_factory=list)
    complete: bool = True


def build_report(output_dir: str) -> Report:
    output_dir = output_dir.rstrip("/")
    audit = read_audit_file(output_dir)
    recipe = audit.get("recipe") or {}
    terms, terms_note = bias_terms_for(recipe)
    problems: list[str] = []
    ranges = scan_ranges(output_dir)
    aggregates = Aggregates(ranges, terms)
    for batch in all_rows(output_dir, problems):
        aggregates.add_batch(batch)
    optout = optout_report(optout_rows(output_dir, problems=[]), top=OPTOUT_TOP_DOMAINS)
    enriched = {
        **audit,
        "funnel": funnel(audit),
        "distributions": distributions(aggregates, ranges, recipe),
        "optout": {**optout, "top_domains": optout["top_domains"][:TOP_DOMAINS]},
        "bias": aggregates.bias.to_json(terms_note),
        "report": {
            "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "html": layout.AUDIT_HTML,
            "problems": problems,
        },
    }
    _check_rows_match_counts(enriched, problems)
    thumbnails = kept_thumbnails(output_dir, THUMBNAILS, problems)
    complete = FileSystems.exists(layout.OutputLayout(output_dir).success)
    return Report(enriched, optout, aggregates.examples, thumbnails, problems, complete)


def _check_rows_match_counts(audit: dict[str, Any], problems: list[str]) -> None:
    counts, rows = audit["counts"], audit["distributions"]["rows"]
    rejected = sum(sum(reasons.values()) for reasons in counts.get("rejected_by_stage", {}).values())
    if rows[KEPT] != counts.get("kept") or rows[REJECTED] != rejected:
        problems.append(
            f"the files hold {rows[KEPT]} kept and {rows[REJECTED]} rejected rows but the audit counts "
            f"{counts.get('kept')} and {rejected}: the output is incomplete or was changed after the run"
        )


def write_reports(output_dir: str) -> list[str]:
    """Write report/audit.json (enriched), report/optout.json and report/audit.html; returns their paths."""
    output_dir = output_dir.rstrip("/")
    report = build_report(output_dir)
    paths = [layout.OutputLayout(output_dir).path(name) for name in (layout.AUDIT, layout.OPTOUT, layout.AUDIT_HTML)]
    write_json(paths[0], report.audit)
    write_json(paths[1], report.optout)
    page = AtomicFile(paths[2])
    page.handle.write(render_html(report).encode("utf-8"))
    page.commit()
    return paths


def add_report_command(subparsers) -> None:
    """Adds `curate report DIR` to the command line's subparsers."""
    parser = subparsers.add_parser(
        "report",
        help="(re)generate report/audit.html, the distributions in audit.json and optout.json",
        description="Read a finished output folder (shards and rejects) and write report/audit.json "
        "(counts kept, distributions added), report/optout.json and report/audit.html, "
        "without re-running the pipeline.",
    )
    parser.add_argument("output_dir", metavar="DIR", help="output folder of `curate run` (local or e.g. gs://)")
    parser.set_defaults(handler=report_command)


def report_command(args, beam_args: list[str]) -> int:
    try:
        paths = write_reports(args.output_dir)
    except ReportError as err:
        print(f"curate: error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"curate: wrote {path}")
    return 0
