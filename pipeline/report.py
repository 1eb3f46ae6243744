"""The audit report: distributions of a finished output, as JSON and as one HTML page.

`write_reports(DIR)` reads an output folder and writes

* `report/audit.json`: the run's audit with its counts untouched, plus
  `funnel`, `distributions` (histograms of every numeric `*_score` field and
  of original image size, aspect ratio and caption length, each split kept vs
  rejected; language shares; top domains), `optout` and `bias`;
* `report/optout.json`: rows dropped by opt-out rules, by reason, rule kind
  and domain (`pipeline.optout_rules.optout_report`);
* `report/audit.html`: one self-contained page (inline SVG charts, base64
  thumbnails, no script or network) with the same content and examples.

It streams: shard metadata and rejects are read in batches of rows, twice
(the first pass finds each histogram's range), and only the first shards'
images are opened, for the thumbnails.  Paths may be local or on any Beam
filesystem (gs://...).  `curate report DIR` regenerates all three files.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import random
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from filters.bias_audit import PERCEIVED_FIELD, TermsError, load_terms, split_labels
from pipeline.audit import SUCCESS_FILE, write_json
from pipeline.optout_rules import OPTOUT_REASONS, optout_report
from pipeline.writers import AtomicFile

KEPT, REJECTED = "kept", "rejected"
SPLITS = (KEPT, REJECTED)
HISTOGRAM_BINS = 30
RESERVOIR_SIZE = 20_000  # values per measure kept by the first pass to find a long tail
TAIL_QUANTILE = 0.995
BATCH_ROWS = 8192
TOP_DOMAINS = 20
TOP_LANGUAGES = 15
OPTOUT_TOP_DOMAINS = 100  # in optout.json; audit.json and the page show TOP_DOMAINS
DOMAIN_CAPACITY = 200_000  # distinct domains remembered exactly; beyond, counts become lower bounds
EXAMPLES_PER_REASON = 5
THUMBNAILS = 12
THUMBNAIL_PIXELS = 112
IMAGE_COLUMNS = ("jpg", "png", "webp")

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
MEASURE_TITLES = {
    "original_short_side": "Original shorter side (px)",
    "original_long_side": "Original longer side (px)",
    "aspect_ratio": "Original aspect ratio (width / height)",
    "caption_chars": "Caption length (characters)",
    "caption_words": "Caption length (words)",
}


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


def list_files(pattern: str) -> list[str]:
    return sorted(metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list)


def _is_scalar(arrow_type: pa.DataType) -> bool:
    """Columns worth reading: not image bytes, not embeddings or other nested values."""
    nested = pa.types.is_nested(arrow_type)
    binary = pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
    return not nested and not binary


def _parquet_batches(path: str, problems: list[str], columns: Callable[[pa.Schema], list[str]] | None = None):
    """Batches of row dicts from one Parquet file; a broken file is noted in `problems`, not raised."""
    try:
        with FileSystems.open(path) as handle:
            parquet = pq.ParquetFile(handle)
            selected = columns(parquet.schema_arrow) if columns else None
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=selected):
                yield batch.to_pylist()
    except (OSError, pa.ArrowException) as err:
        problems.append(f"{path}: unreadable, skipped ({err})")


def _scalar_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if _is_scalar(f.type)]


def kept_rows(output_dir: str, problems: list[str]) -> Iterator[list[Row]]:
    for path in list_files(f"{output_dir}/shards/*.parquet"):
        for batch in _parquet_batches(path, problems, _scalar_columns):
            yield [_kept_row(values) for values in batch]


def _kept_row(values: dict[str, Any]) -> Row:
    return Row(str(values.get("key")), values.get("url") or "", values.get("caption"), None, None, values)


def rejected_rows(output_dir: str, problems: list[str]) -> Iterator[list[Row]]:
    for path in list_files(f"{output_dir}/rejects/*.parquet"):
        for batch in _parquet_batches(path, problems):
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
    return (name == "score" or name.endswith("_score")) and _number(value) is not None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def measures(row: Row) -> dict[str, float | None]:
    """Every numeric quantity histogrammed for a row: its scores and derived sizes."""
    values = {name: _number(value) for name, value in row.fields.items() if is_score_field(name, value)}
    width, height = _number(row.fields.get("original_width")), _number(row.fields.get("original_height"))
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
        value = _number(params.get(stage, {}).get(param))
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
    notes = [f"{name}={_short(value)}" for name, value in sorted(row.fields.items()) if is_score_field(name, value)]
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
    path = f"{output_dir}/report/audit.json"
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

    for path in list_files(f"{output_dir}/rejects/*.parquet"):
        for batch in _parquet_batches(path, problems, columns):
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
    tars = list_files(f"{output_dir}/shards/*.tar")
    source = _tar_samples(tars, problems) if tars else _parquet_samples(output_dir, problems)
    thumbnails = []
    for key, caption, data in source:
        uri = thumbnail_uri(data)
        if uri:
            thumbnails.append(Thumbnail(key, caption, uri))
        if len(thumbnails) >= limit:
            break
    return thumbnails


def _tar_samples(paths: list[str], problems: list[str]) -> Iterator[tuple[str, str | None, bytes]]:
    """(key, caption, image bytes), reading each tar as a stream (members come as key.jpg, key.txt, key.json)."""
    for path in paths:
        images: dict[str, bytes] = {}
        try:
            with FileSystems.open(path) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
                for member in tar:
                    key, _, extension = member.name.rpartition(".")
                    if extension in IMAGE_COLUMNS:
                        images[key] = tar.extractfile(member).read()
                    elif extension == "txt" and key in images:
                        yield key, tar.extractfile(member).read().decode("utf-8", "replace"), images.pop(key)
        except (OSError, tarfile.TarError) as err:
            problems.append(f"{path}: unreadable tar, no thumbnails from it ({err})")


def _parquet_samples(output_dir: str, problems: list[str]) -> Iterator[tuple[str, str | None, bytes]]:
    def image_columns(schema: pa.Schema) -> list[str]:
        return [name for name in ("key", "caption", *IMAGE_COLUMNS) if name in schema.names]

    for path in list_files(f"{output_dir}/shards/*.parquet"):
        for batch in _parquet_batches(path, problems, image_columns):
            for values in batch:
                data = next((values[c] for c in IMAGE_COLUMNS if values.get(c)), None)
                if data:
                    yield str(values.get("key")), values.get("caption"), data


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
            "html": "report/audit.html",
            "problems": problems,
        },
    }
    _check_rows_match_counts(enriched, problems)
    thumbnails = kept_thumbnails(output_dir, THUMBNAILS, problems)
    complete = FileSystems.exists(f"{output_dir}/{SUCCESS_FILE}")
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
    paths = [f"{output_dir}/report/{name}" for name in ("audit.json", "optout.json", "audit.html")]
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


# ---------------------------------------------------------------- HTML: formatting and charts

COLORS = {KEPT: "#3b6fb6", REJECTED: "#e07b39", "marker": "#c0392b", "grid": "#e3e6eb", "text": "#2b2f36"}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def svg_histogram(histogram: dict[str, Any], width: int = 520, height: int = 210) -> str:
    """Stacked bars (kept below, rejected above) with the thresholds as dashed lines."""
    edges, kept, rejected = histogram["bins"], histogram[KEPT], histogram[REJECTED]
    if not kept or not (sum(kept) + sum(rejected)):
        return '<p class="empty">No values.</p>'
    left, right, top, bottom = 46, 22, 34, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    low, high = edges[0], edges[-1]
    tallest = max(k + r for k, r in zip(kept, rejected))
    bar_w = plot_w / len(kept)
    parts = [_svg_open(width, height, "histogram")]
    for fraction in (0, 0.5, 1):
        y = top + plot_h * (1 - fraction)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{COLORS["grid"]}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_short(tallest * fraction)}</text>')
    for i, (k, r) in enumerate(zip(kept, rejected)):
        x = left + i * bar_w
        k_h, r_h = plot_h * k / tallest, plot_h * r / tallest
        tip = f"{_short(edges[i])} – {_short(edges[i + 1])}: kept {k}, rejected {r}"
        parts.append(f'<g><title>{_esc(tip)}</title>'
                     f'<rect x="{x:.1f}" y="{top + plot_h - k_h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                     f'height="{k_h:.1f}" fill="{COLORS[KEPT]}"/>'
                     f'<rect x="{x:.1f}" y="{top + plot_h - k_h - r_h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                     f'height="{r_h:.1f}" fill="{COLORS[REJECTED]}"/></g>')
    log_scale = histogram.get("scale") == "log"
    for i in range(5):
        value = _axis_value(i / 4, low, high, log_scale)
        x = left + plot_w * i / 4
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{_short(value)}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#888"/>')
    for n, marker in enumerate(m for m in histogram["thresholds"] if low <= m["value"] <= high):
        x = left + plot_w * _axis_fraction(marker["value"], low, high, log_scale)
        label_y = top - 7 - 12 * (n % 2)  # alternate heights so neighbouring labels do not overlap
        parts.append(f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{label_y - 9}" y2="{top + plot_h}" '
                     f'stroke="{COLORS["marker"]}" stroke-width="1.5" stroke-dasharray="5,3"/>')
        anchor = "end" if x > left + plot_w * 0.7 else "start"
        offset = -4 if anchor == "end" else 4
        parts.append(f'<text x="{x + offset:.1f}" y="{label_y}" text-anchor="{anchor}" '
                     f'fill="{COLORS["marker"]}">{_esc(marker["label"])} = {_short(marker["value"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _axis_value(fraction: float, low: float, high: float, log_scale: bool) -> float:
    return low * (high / low) ** fraction if log_scale else low + (high - low) * fraction


def _axis_fraction(value: float, low: float, high: float, log_scale: bool) -> float:
    return math.log(value / low) / math.log(high / low) if log_scale else (value - low) / (high - low)


def _svg_open(width: int, height: int, kind: str) -> str:
    return (f'<svg class="chart {kind}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" font-size="11" fill="{COLORS["text"]}">')


def _legend(x: int, y: int) -> str:
    items = []
    for i, split in enumerate(SPLITS):
        items.append(f'<rect x="{x + 75 * i}" y="{y - 9}" width="10" height="10" fill="{COLORS[split]}"/>'
                     f'<text x="{x + 75 * i + 14}" y="{y}">{split}</text>')
    return "".join(items)


@dataclass
class Bar:
    label: str
    values: list[float]  # one per series
    texts: list[str]  # one per series, printed after its bar


def svg_bars(bars: list[Bar], series: list[str], width: int = 520, label_width: int = 170) -> str:
    """Horizontal bars, one group per label, one bar per series."""
    if not bars:
        return '<p class="empty">Nothing to show.</p>'
    bar_h, gap = 13, 8
    group_h = bar_h * len(series) + gap
    legend_h = 18 if len(series) > 1 else 0
    height = legend_h + group_h * len(bars) + 4
    plot_w = width - label_width - 110
    largest = max((v for bar in bars for v in bar.values), default=0) or 1
    parts = [_svg_open(width, height, "bars")]
    if len(series) > 1:
        parts.append(_legend(label_width, 12))
    for i, bar in enumerate(bars):
        y0 = legend_h + i * group_h
        label = bar.label if len(bar.label) <= 26 else bar.label[:25] + "…"
        parts.append(f'<text x="{label_width - 8}" y="{y0 + group_h / 2 + 1:.1f}" text-anchor="end">'
                     f'<title>{_esc(bar.label)}</title>{_esc(label)}</text>')
        for j, (name, value, text) in enumerate(zip(series, bar.values, bar.texts)):
            w = plot_w * value / largest
            y = y0 + j * bar_h
            parts.append(f'<rect x="{label_width}" y="{y}" width="{max(w, 0.5):.1f}" '
                         f'height="{bar_h - 2}" fill="{COLORS.get(name, COLORS[KEPT])}"/>'
                         f'<text x="{label_width + w + 5:.1f}" y="{y + bar_h - 3}" font-size="10">{_esc(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="{"num" if i >= numeric_from else ""}">{_esc(_short(cell))}</td>' for i, cell in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------- HTML: sections


@dataclass
class Section:
    anchor: str
    title: str
    body: str


LEGEND = "".join(f'<span class="key" style="background:{COLORS[split]}"></span>{split} ' for split in SPLITS)


def _figure(title: str, chart: str, note: str = "", legend: bool = False) -> str:
    caption = f'<p class="note">{note}</p>' if note else ""
    key = f'<span class="legend">{LEGEND}</span>' if legend else ""
    return f'<figure><figcaption>{_esc(title)}{key}</figcaption>{chart}{caption}</figure>'


def _histogram_figures(histograms: dict[str, dict], titles: dict[str, str]) -> str:
    figures = []
    for name, histogram in histograms.items():
        off_chart = [m for m in histogram["thresholds"] if not histogram["bins"]
                     or not histogram["bins"][0] <= m["value"] <= histogram["bins"][-1]]
        missing = histogram["missing"]
        notes = [f"{missing[KEPT]:,} kept and {missing[REJECTED]:,} rejected rows have no value."]
        above = histogram["above_range"]
        if above[KEPT] or above[REJECTED]:
            notes.append(f"The last bar also holds the long tail above {_short(histogram['bins'][-1])} "
                         f"({above[KEPT]:,} kept, {above[REJECTED]:,} rejected).")
        if histogram["scale"] == "log":
            notes.append("Logarithmic axis.")
        notes += [f"{_esc(m['label'])} = {_short(m['value'])} is outside the data's range." for m in off_chart]
        figures.append(_figure(titles.get(name, name), svg_histogram(histogram), " ".join(notes), legend=True))
    return f'<div class="grid">{"".join(figures)}</div>'


def summary_section(report: Report) -> Section:
    audit = report.audit
    counts = audit["counts"]
    rejected = counts["input"] - counts["kept"]
    recipe = audit.get("recipe") or {}
    warnings = []
    if not report.complete:
        warnings.append("No _SUCCESS file: the run did not finish, so these numbers may be partial.")
    warnings += report.problems
    warning_html = "".join(f'<p class="warning">{_esc(w)}</p>' for w in warnings)
    rows = [
        ["input rows", counts["input"], "100%"],
        ["kept", counts["kept"], _percent(counts["kept"], counts["input"])],
        ["rejected", rejected, _percent(rejected, counts["input"])],
    ]
    facts = (f'<p>Recipe <b>{_esc(recipe.get("name", "?"))}</b>, '
             f'{len(recipe.get("stages") or [])} stages; run finished {_esc(audit.get("finished_at", "?"))}; '
             f'report generated {_esc(audit["report"]["generated_at"])}.</p>')
    return Section("summary", "Summary", warning_html + facts + _table(["", "rows", "share"], rows))


def funnel_section(report: Report) -> Section:
    steps = report.audit["funnel"]
    total = steps[0]["remaining"] or 1
    bars = [Bar(s["stage"], [s["remaining"]],
                [f"{s['remaining']:,}" + (f"  (−{s['dropped']:,})" if s["dropped"] else "")]) for s in steps]
    by_stage = report.audit["counts"].get("rejected_by_stage", {})
    reasons = [[stage, reason, n, _percent(n, total)] for stage, found in by_stage.items()
               for reason, n in sorted(found.items(), key=lambda item: -item[1])]
    body = (_figure("Rows remaining after each step, in the order the steps ran", svg_bars(bars, [KEPT]))
            + "<h3>Rejections by reason</h3>"
            + _table(["stage", "reason", "rows", "share of input"], reasons, numeric_from=2))
    return Section("funnel", "Funnel", body)


def scores_section(report: Report) -> Section:
    scores = report.audit["distributions"]["scores"]
    if not scores:
        body = '<p class="empty">No score fields (*_score) in this output: the recipe has no scoring stages.</p>'
    else:
        body = ('<p>Every numeric <code>*_score</code> field; dashed lines are the recipe\'s thresholds. '
                'Rejected rows have a score only if they were dropped after the stage that wrote it.</p>'
                + _histogram_figures(scores, {}))
    return Section("scores", "Scores", body)


def images_section(report: Report) -> Section:
    return Section("images", "Resolution and aspect ratio",
                   _histogram_figures(report.audit["distributions"]["image"], MEASURE_TITLES))


def captions_section(report: Report) -> Section:
    return Section("captions", "Caption length",
                   _histogram_figures(report.audit["distributions"]["caption"], MEASURE_TITLES))


def _share_bars(by_split: dict[str, dict[str, int]] | dict[str, list], limit: int) -> list[Bar]:
    counts = {split: Counter(dict(by_split[split])) for split in SPLITS}
    totals = {split: sum(counts[split].values()) for split in SPLITS}
    names = [name for name, _ in (counts[KEPT] + counts[REJECTED]).most_common(limit)]
    return [
        Bar(name, [100 * counts[s][name] / (totals[s] or 1) for s in SPLITS],
            [f"{_percent(counts[s][name], totals[s])} ({counts[s][name]:,})" for s in SPLITS])
        for name in names
    ]


def languages_section(report: Report) -> Section:
    languages = report.audit["distributions"]["languages"]
    if languages is None:
        body = '<p class="empty">No <code>lang</code> field: add the <code>language</code> stage to the recipe.</p>'
    else:
        body = _figure("Share of rows per detected caption language (kept vs rejected)",
                       svg_bars(_share_bars(languages, TOP_LANGUAGES), list(SPLITS)))
    return Section("languages", "Languages", body)


def domains_section(report: Report) -> Section:
    domains = report.audit["distributions"]["domains"]
    note = " Counts are lower bounds: too many distinct domains to count exactly." if domains["approximate"] else ""
    body = _figure(f"Top image domains by rows (share of kept and of rejected rows).{note}",
                   svg_bars(_share_bars(domains, TOP_DOMAINS), list(SPLITS)))
    return Section("domains", "Top domains", body)


def dedup_section(report: Report) -> Section:
    parts = []
    for stage, stage_report in (report.audit.get("dedup") or {}).items():
        parts.append(f"<h3>{_esc(stage)}</h3>{_render_value(stage_report)}")
    by_stage = report.audit["counts"].get("rejected_by_stage", {})
    dedup_rows = [[stage, reason, n] for stage, found in by_stage.items() if stage.startswith("dedup")
                  for reason, n in found.items()]
    if dedup_rows:
        parts.append("<h3>Rows dropped as duplicates</h3>" + _table(["stage", "reason", "rows"], dedup_rows, 2))
    if not parts:
        parts.append('<p class="empty">No deduplication stage in this run.</p>')
    return Section("dedup", "Deduplication", "".join(parts))


def _render_value(value: Any) -> str:
    """A stage's free-form report: scalars as a table, counts as bars, lists of records as tables."""
    if isinstance(value, dict):
        if value and all(_number(v) is not None for v in value.values()) and len(value) > 1:
            return svg_bars([Bar(str(k), [float(v)], [_short(v)]) for k, v in value.items()], [KEPT])
        scalars = [[k, v] for k, v in value.items() if not isinstance(v, (dict, list))]
        nested = [(k, v) for k, v in value.items() if isinstance(v, (dict, list))]
        html_parts = [_table(["", "value"], scalars)] if scalars else []
        for key, item in nested:
            html_parts.append(f"<h4>{_esc(key)}</h4>{_render_value(item)}")
        return "".join(html_parts)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        header = list(dict.fromkeys(k for v in value for k in v))
        return _table(header, [[_short_json(v.get(k)) for k in header] for v in value[:50]], numeric_from=len(header))
    return f"<pre>{_esc(json.dumps(value, indent=1)[:4000])}</pre>"


def _short_json(value: Any) -> Any:
    return value if isinstance(value, (str, int, float)) or value is None else json.dumps(value)[:200]


def optout_section(report: Report) -> Section:
    optout = report.optout
    if not optout["total"]:
        return Section("optout", "Opt-out",
                       '<p class="empty">No rows were dropped by opt-out rules.</p>')
    reasons = [Bar(reason, [n], [f"{n:,}"]) for reason, n in optout["by_reason"].items()]
    domains = [Bar(d["domain"], [d["count"]], [f"{d['count']:,}"]) for d in optout["top_domains"][:TOP_DOMAINS]]
    kinds = [[kind, n] for kind, n in optout.get("by_list_rule_kind", {}).items()]
    body = (f"<p>{optout['total']:,} rows from {optout['domains']:,} domains were dropped because their owners "
            "opted out. Full counts: <code>report/optout.json</code>.</p>"
            '<div class="grid">'
            + _figure("Rows by opt-out rule", svg_bars(reasons, [REJECTED]))
            + _figure("Top opted-out domains", svg_bars(domains, [REJECTED]))
            + "</div>"
            + ("<h3>Opt-out list matches by rule kind</h3>" + _table(["rule kind", "rows"], kinds) if kinds else ""))
    return Section("optout", "Opt-out", body)


def _outcomes(report: Report, rows: dict[str, int]) -> list[str]:
    """Stages that dropped rows, in funnel order."""
    order = [step["stage"] for step in report.audit["funnel"]]
    return sorted((o for o in rows if o != KEPT), key=lambda o: order.index(o) if o in order else len(order))


def _rate_table(tally: dict[str, Any], categories: list[str], outcomes: list[str]) -> str:
    """Per label: rows mentioning it, keep rate, and the share each stage dropped."""
    def row(label: str, counts: dict[str, int]) -> list[Any]:
        total = sum(counts.values())
        return [label, total, counts.get(KEPT, 0), _percent(counts.get(KEPT, 0), total),
                *(_percent(counts.get(o, 0), total) for o in outcomes)]

    header = ["label", "rows", "kept", "keep rate", *(f"dropped by {o}" for o in outcomes)]
    tables = []
    for category in categories:
        rows = [row(label.partition("/")[2], counts) for label, counts in tally["labels"].items()
                if label.partition("/")[0] == category]
        if rows:
            baseline = row("all rows", tally["rows"])
            tables.append(f"<h4>{_esc(category)}</h4>" + _table(header, [baseline, *rows]))
    return "".join(tables) or '<p class="empty">No matches.</p>'


def _balance_rows(pairs: dict[str, dict[str, int]], group_categories: list[str]) -> list[list[Any]]:
    """For each context and group category: each group's share of the pairs, all rows vs kept rows."""
    totals: dict[tuple[str, str], Counter] = {}
    for pair, counts in pairs.items():
        group, _, context = pair.partition(" & ")
        slot = totals.setdefault((context, group.partition("/")[0]), Counter())
        slot["all"] += sum(counts.values())
        slot[KEPT] += counts.get(KEPT, 0)
    rows = []
    for pair, counts in sorted(pairs.items(), key=lambda item: (item[0].partition(" & ")[2], item[0])):
        group, _, context = pair.partition(" & ")
        slot = totals[(context, group.partition("/")[0])]
        all_share = sum(counts.values()) / slot["all"]
        kept_share = counts.get(KEPT, 0) / slot[KEPT] if slot[KEPT] else None
        shift = f"{100 * (kept_share - all_share):+.1f} pp" if kept_share is not None else "–"
        kept_text = f"{100 * kept_share:.1f}%" if kept_share is not None else "–"
        rows.append([context, group, sum(counts.values()), f"{100 * all_share:.1f}%", kept_text, shift])
    return rows


def bias_section(report: Report) -> Section:
    bias = report.audit["bias"]
    mentions = bias["mentions"]
    outcomes = _outcomes(report, mentions["rows"])
    parts = [f'<p class="note">{_esc(bias["note"])} Word list: {_esc(bias["terms"])}.</p>',
             "<h3>Who captions mention, and what filtering kept</h3>"
             "<p>A keep rate lower than the <i>all rows</i> rate means the filters removed captions mentioning that "
             "group more often than others; the <i>dropped by</i> columns say which stage did.</p>",
             _rate_table(mentions, bias["group_categories"], outcomes)]
    balance = _balance_rows(bias["cooccurrence"]["labels"], bias["group_categories"])
    parts.append("<h3>Groups × occupations and activities</h3>"
                 "<p>Among captions mentioning a context (e.g. cooking) and a group of one category, "
                 "each group's share "
                 "before filtering (all rows) and after (kept), and the shift in percentage points.</p>")
    parts.append(_table(["context", "group", "rows", "share, all rows", "share, kept", "shift"], balance, 2)
                 if balance else '<p class="empty">No caption mentions both a group and a context.</p>')
    parts.append("<h3>Contexts mentioned</h3>" + _rate_table(mentions, bias["context_categories"], outcomes))
    perceived = bias["perceived"]
    if perceived:
        attributes = sorted({label.partition("/")[0] for label in perceived["labels"]})
        parts.append("<h3>Perceived attributes (model estimates)</h3>"
                     '<p class="note">Zero-shot CLIP estimates of how people in the images are presented, from the '
                     "bias_audit stage. They carry the model's own biases and say nothing certain about anyone; "
                     "rows dropped before that stage have no estimate.</p>"
                     + _rate_table(perceived, attributes, _outcomes(report, perceived["rows"])))
    else:
        parts.append('<p class="empty">No perceived-attribute estimates: run <code>bias_audit</code> with '
                     "<code>clip_model</code> to add them.</p>")
    return Section("bias", "Bias audit", "".join(parts))


def _clip_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def examples_section(report: Report) -> Section:
    parts = ["<h3>Kept samples (first shards)</h3>"]
    if report.thumbnails:
        cells = "".join(
            f'<div class="thumb"><img src="{t.data_uri}" alt="{_esc(t.key)}" width="{THUMBNAIL_PIXELS}">'
            f'<span>{_esc(_clip_text(t.caption or "", 80))}</span></div>'
            for t in report.thumbnails
        )
        parts.append(f'<div class="thumbs">{cells}</div>')
    else:
        parts.append('<p class="empty">No kept images.</p>')
    parts.append("<h3>Rejected samples by reason</h3><p>Rejected images are not stored: URL and caption only.</p>")
    order = [step["stage"] for step in report.audit["funnel"]]
    for (stage, reason), examples in sorted(
        report.examples.items(), key=lambda item: (order.index(item[0][0]) if item[0][0] in order else 99, item[0])
    ):
        rows = [[e.key, e.url, _clip_text(e.caption or "", 160), e.detail] for e in examples]
        parts.append(f"<h4>{_esc(stage)} / {_esc(reason)}</h4>"
                     + _table(["key", "url", "caption", "detail"], rows, numeric_from=4))
    return Section("examples", "Examples", "".join(parts))


def recipe_section(report: Report) -> Section:
    recipe = json.dumps(report.audit.get("recipe") or {}, indent=2)
    return Section("recipe", "Recipe", f"<pre>{_esc(recipe)}</pre>")


SECTIONS = (summary_section, funnel_section, scores_section, images_section, captions_section,
            languages_section, domains_section, dedup_section, optout_section, bias_section,
            examples_section, recipe_section)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#2b2f36;
  line-height:1.5;margin:0;background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:28px;margin:8px 0 4px}h2{font-size:21px;margin:36px 0 8px;padding-top:8px;border-top:1px solid #e3e6eb}
h3{font-size:16px;margin:22px 0 6px}h4{font-size:14px;margin:14px 0 4px;color:#4a505a}
nav ol{columns:3;margin:8px 0 0;padding-left:20px}nav a{color:#3b6fb6;text-decoration:none}
table{border-collapse:collapse;font-size:13px;margin:6px 0;max-width:100%}
th,td{padding:3px 10px;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td{word-break:break-word;max-width:420px}td:first-child{white-space:nowrap}
.grid{display:flex;flex-wrap:wrap;gap:12px 24px}figure{margin:8px 0}
figcaption{font-weight:600;font-size:13px;margin-bottom:2px}
.note{color:#5b616b;font-size:13px}.empty{color:#8a9099;font-style:italic}
.warning{background:#fdf1e7;border-left:4px solid #e07b39;padding:6px 10px}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}.thumb{width:112px;font-size:11px;color:#5b616b}
.thumb img{display:block;border:1px solid #e3e6eb}
.legend{font-weight:400;color:#5b616b;margin-left:14px}
.key{display:inline-block;width:10px;height:10px;margin:0 4px 0 8px;vertical-align:-1px}
pre{background:#f6f7f9;padding:10px;font-size:12px;overflow-x:auto}
"""


def render_html(report: Report) -> str:
    sections = [build(report) for build in SECTIONS]
    toc = "".join(f'<li><a href="#{s.anchor}">{_esc(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{_esc(s.title)}</h2>{s.body}</section>' for s in sections)
    name = (report.audit.get("recipe") or {}).get("name", "")
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>curate audit – {_esc(name)}</title><style>{STYLE}</style></head><body><main>"
        f"<h1>Dataset audit</h1><p class=\"note\">{_esc(name)}: kept vs rejected rows of one output folder.</p>"
        f"<nav><b>Contents</b><ol>{toc}</ol></nav>{body}</main></body></html>\n"
    )
