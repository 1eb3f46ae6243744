"""The audit page's charts, drawn as inline SVG strings (no plotting library, no script).

`svg_histogram` draws one histogram of `audit.json` (kept and rejected
stacked, the recipe's thresholds as dashed lines); `svg_bars` draws labelled
horizontal bars, one per series (kept vs rejected shares, funnel steps,
opt-out counts).  Both return markup ready to place in `pipeline.tools.report_html`'s page.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.tools.report_format import KEPT, REJECTED, SPLITS, escape, short_text

COLORS = {KEPT: "#3b6fb6", REJECTED: "#e07b39", "marker": "#c0392b", "grid": "#e3e6eb", "text": "#2b2f36"}
BAR_HEIGHT, BAR_GAP = 13, 8  # px per bar and between label groups in svg_bars


def _svg_open(width: int, height: int, kind: str) -> str:
    return (f'<svg class="chart {kind}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" font-size="11" fill="{COLORS["text"]}">')


# ---------------------------------------------------------------- histograms


@dataclass(frozen=True)
class _Frame:
    """A histogram's size and the plot area inside its margins (room for axis and threshold labels)."""

    width: int
    height: int
    left: int = 46
    right: int = 22
    top: int = 34
    bottom: int = 24

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> int:
        return self.height - self.top - self.bottom

    @property
    def baseline(self) -> int:
        """The y of the x axis."""
        return self.top + self.plot_height


@dataclass(frozen=True)
class _ValueAxis:
    """The x axis from the first to the last bin edge, linear or logarithmic."""

    low: float
    high: float
    log_scale: bool

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high

    def value_at(self, fraction: float) -> float:
        low, high = self.low, self.high
        return low * (high / low) ** fraction if self.log_scale else low + (high - low) * fraction

    def fraction_of(self, value: float) -> float:
        low, high = self.low, self.high
        return math.log(value / low) / math.log(high / low) if self.log_scale else (value - low) / (high - low)


def svg_histogram(histogram: dict[str, Any], width: int = 520, height: int = 210) -> str:
    """Stacked bars (kept below, rejected above) with the thresholds as dashed lines."""
    edges, kept, rejected = histogram["bins"], histogram[KEPT], histogram[REJECTED]
    if not kept or not (sum(kept) + sum(rejected)):
        return '<p class="empty">No values.</p>'
    frame = _Frame(width, height)
    axis = _ValueAxis(edges[0], edges[-1], histogram.get("scale") == "log")
    tallest = max(k + r for k, r in zip(kept, rejected))
    x_axis = (f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{frame.baseline}" y2="{frame.baseline}" '
              'stroke="#888"/>')
    return "".join([
        _svg_open(width, height, "histogram"),
        _count_gridlines(frame, tallest),
        _stacked_bars(frame, histogram, tallest),
        _value_labels(frame, axis),
        x_axis,
        _threshold_lines(frame, axis, histogram["thresholds"]),
        "</svg>",
    ])


def _count_gridlines(frame: _Frame, tallest: int) -> str:
    """Horizontal lines at 0, half and all of the tallest bar, labelled with their row counts."""
    parts = []
    for fraction in (0, 0.5, 1):
        y = frame.top + frame.plot_height * (1 - fraction)
        parts.append(f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{COLORS["grid"]}"/>')
        parts.append(f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{short_text(tallest * fraction)}</text>')
    return "".join(parts)


def _stacked_bars(frame: _Frame, histogram: dict[str, Any], tallest: int) -> str:
    """One bar per bin, kept at the bottom and rejected on top, with the counts as a tooltip."""
    edges, kept, rejected = histogram["bins"], histogram[KEPT], histogram[REJECTED]
    bar_w = frame.plot_width / len(kept)
    parts = []
    for i, (k, r) in enumerate(zip(kept, rejected)):
        x = frame.left + i * bar_w
        k_h, r_h = frame.plot_height * k / tallest, frame.plot_height * r / tallest
        tip = f"{short_text(edges[i])} – {short_text(edges[i + 1])}: kept {k}, rejected {r}"
        parts.append(f'<g><title>{escape(tip)}</title>'
                     f'<rect x="{x:.1f}" y="{frame.baseline - k_h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                     f'height="{k_h:.1f}" fill="{COLORS[KEPT]}"/>'
                     f'<rect x="{x:.1f}" y="{frame.baseline - k_h - r_h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                     f'height="{r_h:.1f}" fill="{COLORS[REJECTED]}"/></g>')
    return "".join(parts)


def _value_labels(frame: _Frame, axis: _ValueAxis) -> str:
    """Five values under the x axis, evenly spaced on its (linear or log) scale."""
    parts = []
    for i in range(5):
        x = frame.left + frame.plot_width * i / 4
        parts.append(f'<text x="{x:.1f}" y="{frame.height - frame.bottom + 16}" text-anchor="middle">'
                     f'{short_text(axis.value_at(i / 4))}</text>')
    return "".join(parts)


def _threshold_lines(frame: _Frame, axis: _ValueAxis, thresholds: list[dict[str, Any]]) -> str:
    """A dashed line and a `label = value` for each threshold on the axis (the page notes the others)."""
    parts = []
    for n, marker in enumerate(m for m in thresholds if axis.covers(m["value"])):
        x = frame.left + frame.plot_width * axis.fraction_of(marker["value"])
        label_y = frame.top - 7 - 12 * (n % 2)  # alternate heights so neighbouring labels do not overlap
        parts.append(f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{label_y - 9}" y2="{frame.baseline}" '
                     f'stroke="{COLORS["marker"]}" stroke-width="1.5" stroke-dasharray="5,3"/>')
        anchor = "end" if x > frame.left + frame.plot_width * 0.7 else "start"
        offset = -4 if anchor == "end" else 4
        parts.append(f'<text x="{x + offset:.1f}" y="{label_y}" text-anchor="{anchor}" '
                     f'fill="{COLORS["marker"]}">{escape(marker["label"])} = {short_text(marker["value"])}</text>')
    return "".join(parts)


# ---------------------------------------------------------------- horizontal bars


@dataclass
class Bar:
    label: str
    values: list[float]  # one per series
    texts: list[str]  # one per series, printed after its bar


@dataclass(frozen=True)
class _BarLayout:
    label_width: int  # px left of the bars, for the labels
    plot_width: int  # px the largest value's bar spans
    largest: float
    group_height: int  # px per label: its bars and a gap

    def length(self, value: float) -> float:
        return self.plot_width * value / self.largest


def svg_bars(bars: list[Bar], series: list[str], width: int = 520, label_width: int = 170) -> str:
    """Horizontal bars, one group per label, one bar per series."""
    if not bars:
        return '<p class="empty">Nothing to show.</p>'
    largest = max((v for bar in bars for v in bar.values), default=0) or 1
    layout = _BarLayout(label_width, width - label_width - 110, largest, BAR_HEIGHT * len(series) + BAR_GAP)
    legend_h = 18 if len(series) > 1 else 0
    height = legend_h + layout.group_height * len(bars) + 4
    parts = [_svg_open(width, height, "bars")]
    if len(series) > 1:
        parts.append(_legend(label_width, 12))
    for i, bar in enumerate(bars):
        parts.append(_bar_group(bar, series, legend_h + i * layout.group_height, layout))
    parts.append("</svg>")
    return "".join(parts)


def _legend(x: int, y: int) -> str:
    items = []
    for i, split in enumerate(SPLITS):
        items.append(f'<rect x="{x + 75 * i}" y="{y - 9}" width="10" height="10" fill="{COLORS[split]}"/>'
                     f'<text x="{x + 75 * i + 14}" y="{y}">{split}</text>')
    return "".join(items)


def _bar_group(bar: Bar, series: list[str], y0: int, layout: _BarLayout) -> str:
    """A label (cut to 26 characters, whole in its tooltip) and its bars, each followed by its text."""
    label = bar.label if len(bar.label) <= 26 else bar.label[:25] + "…"
    label_y = y0 + layout.group_height / 2 + 1
    parts = [(f'<text x="{layout.label_width - 8}" y="{label_y:.1f}" text-anchor="end">'
              f'<title>{escape(bar.label)}</title>{escape(label)}</text>')]
    for j, (name, value, text) in enumerate(zip(series, bar.values, bar.texts)):
        w = layout.length(value)
        y = y0 + j * BAR_HEIGHT
        parts.append(f'<rect x="{layout.label_width}" y="{y}" width="{max(w, 0.5):.1f}" '
                     f'height="{BAR_HEIGHT - 2}" fill="{COLORS.get(name, COLORS[KEPT])}"/>'
                     f'<text x="{layout.label_width + w + 5:.1f}" y="{y + BAR_HEIGHT - 3}" font-size="10">'
                     f'{escape(text)}</text>')
    return "".join(parts)
