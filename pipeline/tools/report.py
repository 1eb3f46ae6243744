"""The report's data: the rows of a finished output and what is measured on them.

`pipeline.tools.report_build` (`curate report DIR`) makes report/audit.json,
report/optout.json and report/audit.html from what this module reads:

* the kept and rejected rows (`Row`: metadata, no image), streamed in batches
  from the shards' and rejects' Parquet files, and the rejects' opt-out rows;
* each row's `measures` (every numeric `*_score` field, original image size,
  aspect ratio, caption length), their ranges over all rows (`scan_ranges`,
  the first of two passes) and the fixed-bin `Histogram` each range gives;
* the recipe's thresholds drawn as markers on those histograms;
* thumbnails of the first kept images (only the first shards are opened).

Paths may be local or on any Beam filesystem (gs://...).  The second pass's
counts are in `pipeline.tools.report_tallies`.
"""
from __future__ import annotations

import base64
import io
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.engine import built_dataset
from pipeline.media.optout.reasons import OPTOUT_REASONS
from pipeline.tools.report_format import KEPT, REJECTED, SPLITS, THUMBNAIL_PIXELS, finite_number

HISTOGRAM_BINS = 30
RESERVOIR_SIZE = 20_000  # values per measure kept by the first pass to find a long tail
TAIL_QUANTILE = 0.995

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


def is_score_name(name: str) -> bool:
    return name == "score" or name.endswith("_score")


def is_score_field(name: str, value: Any) -> bool:
    return is_score_name(name) and finite_number(value) is not None


def measures(row: Row) -> dict[str, float | None]:
    """Every numeric quantity histogrammed for a row: its scores and derived sizes."""
    values = {}
    for name, value in row.fields.items():  # is_score_field, with each number converted once
        if is_score_name(name):
            number = finite_number(value)
            if number is not None:
                values[name] = number
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


def optout_rows(output_dir: str, problems: list[str]) -> Iterator[dict[str, Any]]:
    """Rejects rows dropped by an opt-out rule, streamed (the columns optout_report reads)."""
    def columns(schema: pa.Schema) -> list[str]:
        return [name for name in ("stage", "reason", "url", "fields") if name in schema.names]

    for batch in built_dataset.reject_batches(output_dir, problems, columns):
        yield from (row for row in batch if row.get("reason") in OPTOUT_REASONS)


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
