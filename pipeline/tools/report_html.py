"""The audit page, `report/audit.html`: one self-contained HTML document.

`render_html(report)` turns a `pipeline.tools.report_tallies.Report` (the enriched audit,
the opt-out counts, examples and thumbnails) into the page: a table of
contents and one section per topic, each built by a `*_section` function
listed in SECTIONS.  Charts come from `pipeline.tools.report_plots`; the page has
inline CSS, base64 thumbnails and no script or network access.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.tools.report_format import (
    KEPT,
    REJECTED,
    SPLITS,
    THUMBNAIL_PIXELS,
    TOP_DOMAINS,
    escape,
    finite_number,
    percent,
    short_text,
)
from pipeline.tools.report_plots import COLORS, Bar, svg_bars, svg_histogram

if TYPE_CHECKING:
    from pipeline.tools.report_tallies import Report

TOP_LANGUAGES = 15
MEASURE_TITLES = {
    "original_short_side": "Original shorter side (px)",
    "original_long_side": "Original longer side (px)",
    "aspect_ratio": "Original aspect ratio (width / height)",
    "caption_chars": "Caption length (characters)",
    "caption_words": "Caption length (words)",
}


# ---------------------------------------------------------------- building blocks


@dataclass
class Section:
    anchor: str
    title: str
    body: str


LEGEND = "".join(f'<span class="key" style="background:{COLORS[split]}"></span>{split} ' for split in SPLITS)


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="{"num" if i >= numeric_from else ""}">{escape(short_text(cell))}</td>'
            for i, cell in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(title: str, chart: str, note: str = "", legend: bool = False) -> str:
    caption = f'<p class="note">{note}</p>' if note else ""
    key = f'<span class="legend">{LEGEND}</span>' if legend else ""
    return f'<figure><figcaption>{escape(title)}{key}</figcaption>{chart}{caption}</figure>'


def _histogram_figures(histograms: dict[str, dict], titles: dict[str, str]) -> str:
    figures = [_figure(titles.get(name, name), svg_histogram(histogram), _histogram_note(histogram), legend=True)
               for name, histogram in histograms.items()]
    return f'<div class="grid">{"".join(figures)}</div>'


def _histogram_note(histogram: dict[str, Any]) -> str:
    """What the chart does not show: rows without a value, the folded tail, thresholds off its axis."""
    off_chart = [m for m in histogram["thresholds"] if not histogram["bins"]
                 or not histogram["bins"][0] <= m["value"] <= histogram["bins"][-1]]
    missing = histogram["missing"]
    notes = [f"{missing[KEPT]:,} kept and {missing[REJECTED]:,} rejected rows have no value."]
    above = histogram["above_range"]
    if above[KEPT] or above[REJECTED]:
        notes.append(f"The last bar also holds the long tail above {short_text(histogram['bins'][-1])} "
                     f"({above[KEPT]:,} kept, {above[REJECTED]:,} rejected).")
    if histogram["scale"] == "log":
        notes.append("Logarithmic axis.")
    notes += [f"{escape(m['label'])} = {short_text(m['value'])} is outside the data's range." for m in off_chart]
    return " ".join(notes)


# ---------------------------------------------------------------- sections, in page order


def summary_section(report: Report) -> Section:
    audit = report.audit
    counts = audit["counts"]
    rejected = counts["input"] - counts["kept"]
    recipe = audit.get("recipe") or {}
    warnings = []
    if not report.complete:
        warnings.append("No _SUCCESS file: the run did not finish, so these numbers may be partial.")
    warnings += report.problems
    warning_html = "".join(f'<p class="warning">{escape(w)}</p>' for w in warnings)
    rows = [
        ["input rows", counts["input"], "100%"],
        ["kept", counts["kept"], percent(counts["kept"], counts["input"])],
        ["rejected", rejected, percent(rejected, counts["input"])],
    ]
    facts = (f'<p>Recipe <b>{escape(recipe.get("name", "?"))}</b>, '
             f'{len(recipe.get("stages") or [])} stages; run finished {escape(audit.get("finished_at", "?"))}; '
             f'report generated {escape(audit["report"]["generated_at"])}.</p>')
    return Section("summary", "Summary", warning_html + facts + _table(["", "rows", "share"], rows))


def funnel_section(report: Report) -> Section:
    steps = report.audit["funnel"]
    total = steps[0]["remaining"] or 1
    bars = [Bar(s["stage"], [s["remaining"]],
                [f"{s['remaining']:,}" + (f"  (−{s['dropped']:,})" if s["dropped"] else "")]) for s in steps]
    by_stage = report.audit["counts"].get("rejected_by_stage", {})
    reasons = [[stage, reason, n, percent(n, total)] for stage, found in by_stage.items()
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
            [f"{percent(counts[s][name], totals[s])} ({counts[s][name]:,})" for s in SPLITS])
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


def hosts_section(report: Report) -> Section:
    """The download's per-host table (pipeline.media.politeness.host_report) and a plot of the busiest hosts."""
    hosts = (report.audit.get("download") or {}).get("hosts")
    if not hosts or not hosts["top"]:
        return Section("hosts", "Hosts", '<p class="empty">No download in this run.</p>')
    top = hosts["top"]
    bars = [Bar(h["host"], [h["downloaded"]], [f"{h['downloaded']:,} of {h['rows']:,}"]) for h in top[:TOP_DOMAINS]]
    rows = [[h["host"], h["rows"], h["downloaded"], h["success_rate"], h["throttled_answers"], h["host_unavailable"],
             h["mean_latency_s"]] for h in top]
    body = (f"<p>{hosts['hosts']:,} host(s); {hosts['throttled_answers']:,} throttling answers (429/503, each "
            f"pausing its host); {hosts['host_unavailable']:,} rows rejected fast because their host was down "
            "(the breaker).</p>"
            + _figure("Rows downloaded by host, of the rows that reached the download (busiest hosts first)",
                      svg_bars(bars, [KEPT]))
            + _table(["host", "rows", "downloaded", "success rate", "429/503 answers", "host_unavailable",
                      "mean latency (s)"], rows))
    return Section("hosts", "Hosts", body)


def dedup_section(report: Report) -> Section:
    parts = []
    for stage, stage_report in (report.audit.get("dedup") or {}).items():
        parts.append(f"<h3>{escape(stage)}</h3>{_render_value(stage_report)}")
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
        if value and all(finite_number(v) is not None for v in value.values()) and len(value) > 1:
            return svg_bars([Bar(str(k), [float(v)], [short_text(v)]) for k, v in value.items()], [KEPT])
        scalars = [[k, v] for k, v in value.items() if not isinstance(v, (dict, list))]
        nested = [(k, v) for k, v in value.items() if isinstance(v, (dict, list))]
        html_parts = [_table(["", "value"], scalars)] if scalars else []
        for key, item in nested:
            html_parts.append(f"<h4>{escape(key)}</h4>{_render_value(item)}")
        return "".join(html_parts)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        header = list(dict.fromkeys(k for v in value for k in v))
        return _table(header, [[_short_json(v.get(k)) for k in header] for v in value[:50]], numeric_from=len(header))
    return f"<pre>{escape(json.dumps(value, indent=1)[:4000])}</pre>"


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
        return [label, total, counts.get(KEPT, 0), percent(counts.get(KEPT, 0), total),
                *(percent(counts.get(o, 0), total) for o in outcomes)]

    header = ["label", "rows", "kept", "keep rate", *(f"dropped by {o}" for o in outcomes)]
    tables = []
    for category in categories:
        rows = [row(label.partition("/")[2], counts) for label, counts in tally["labels"].items()
                if label.partition("/")[0] == category]
        if rows:
            baseline = row("all rows", tally["rows"])
            tables.append(f"<h4>{escape(category)}</h4>" + _table(header, [baseline, *rows]))
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
    parts = [f'<p class="note">{escape(bias["note"])} Word list: {escape(bias["terms"])}.</p>',
             ("<h3>Who captions mention, and what filtering kept</h3>"
              "<p>A keep rate lower than the <i>all rows</i> rate means the filters removed captions mentioning that "
              "group more often than others; the <i>dropped by</i> columns say which stage did.</p>"),
             _rate_table(mentions, bias["group_categories"], outcomes),
             _balance_html(bias),
             "<h3>Contexts mentioned</h3>" + _rate_table(mentions, bias["context_categories"], outcomes),
             _perceived_html(report, bias["perceived"])]
    return Section("bias", "Bias audit", "".join(parts))


def _balance_html(bias: dict[str, Any]) -> str:
    balance = _balance_rows(bias["cooccurrence"]["labels"], bias["group_categories"])
    return ("<h3>Groups × occupations and activities</h3>"
            "<p>Among captions mentioning a context (e.g. cooking) and a group of one category, "
            "each group's share "
            "before filtering (all rows) and after (kept), and the shift in percentage points.</p>"
            + (_table(["context", "group", "rows", "share, all rows", "share, kept", "shift"], balance, 2)
               if balance else '<p class="empty">No caption mentions both a group and a context.</p>'))


def _perceived_html(report: Report, perceived: dict[str, Any] | None) -> str:
    if not perceived:
        return ('<p class="empty">No perceived-attribute estimates: run <code>bias_audit</code> with '
                "<code>clip_model</code> to add them.</p>")
    attributes = sorted({label.partition("/")[0] for label in perceived["labels"]})
    return ("<h3>Perceived attributes (model estimates)</h3>"
            '<p class="note">Zero-shot CLIP estimates of how people in the images are presented, from the '
            "bias_audit stage. They carry the model's own biases and say nothing certain about anyone; "
            "rows dropped before that stage have no estimate.</p>"
            + _rate_table(perceived, attributes, _outcomes(report, perceived["rows"])))


def _clip_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def examples_section(report: Report) -> Section:
    parts = ["<h3>Kept samples (first shards)</h3>"]
    if report.thumbnails:
        cells = "".join(
            f'<div class="thumb"><img src="{t.data_uri}" alt="{escape(t.key)}" width="{THUMBNAIL_PIXELS}">'
            f'<span>{escape(_clip_text(t.caption or "", 80))}</span></div>'
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
        parts.append(f"<h4>{escape(stage)} / {escape(reason)}</h4>"
                     + _table(["key", "url", "caption", "detail"], rows, numeric_from=4))
    return Section("examples", "Examples", "".join(parts))


def recipe_section(report: Report) -> Section:
    recipe = json.dumps(report.audit.get("recipe") or {}, indent=2)
    return Section("recipe", "Recipe", f"<pre>{escape(recipe)}</pre>")


# ---------------------------------------------------------------- the page

SECTIONS = (summary_section, funnel_section, scores_section, images_section, captions_section,
            languages_section, domains_section, hosts_section, dedup_section, optout_section, bias_section,
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
    toc = "".join(f'<li><a href="#{s.anchor}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{escape(s.title)}</h2>{s.body}</section>' for s in sections)
    name = (report.audit.get("recipe") or {}).get("name", "")
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>curate audit – {escape(name)}</title><style>{STYLE}</style></head><body><main>"
        f"<h1>Dataset audit</h1><p class=\"note\">{escape(name)}: kept vs rejected rows of one output folder.</p>"
        f"<nav><b>Contents</b><ol>{toc}</ol></nav>{body}</main></body></html>\n"
    )
