"""What the audit report's reader, page and charts share.

The two splits every count is kept apart by, the sizes both `audit.json` and
the page use, and how a field's value is read as a number and written as
short text.  It imports nothing of the report, so `pipeline.tools.report` (reading),
`pipeline.tools.report_tallies` (counting), `pipeline.tools.report_build` (writing),
`pipeline.tools.report_html` (the page) and `pipeline.tools.report_plots` (its SVG
charts) can all import it.
"""
from __future__ import annotations

import html
import math
from typing import Any

KEPT, REJECTED = "kept", "rejected"
SPLITS = (KEPT, REJECTED)
TOP_DOMAINS = 20
THUMBNAIL_PIXELS = 112


def finite_number(value: Any) -> float | None:
    """The value as a float if it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def short_text(value: Any) -> str:
    """Numbers as people read them: 3 significant digits, or thousands separated."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def escape(value: Any) -> str:
    """HTML text for a value; None is empty."""
    return html.escape("" if value is None else str(value))
