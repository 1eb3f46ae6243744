"""`curate report DIR`: the audit report of a finished output, as JSON and as one HTML page.

`write_reports(DIR)` reads an output folder and writes

* `report/audit.json`: the run's audit with its counts untouched, plus
  `funnel`, `distributions` (histograms of every numeric `*_score` field and
  of original image size, aspect ratio and caption length, each split kept vs
  rejected; language shares; top domains), `optout` and `bias`;
* `report/optout.json`: rows dropped by opt-out rules, by reason, rule kind
  and domain (`pipeline.tools.report_optout.optout_report`);
* `report/audit.html`: one self-contained page (inline SVG charts, base64
  thumbnails, no script or network) with the same content and examples.

The numbers come from two passes over the rows: `pipeline.tools.report` reads
the output and finds each measure's range, `pipeline.tools.report_tallies`
counts; `pipeline.tools.report_html` renders the page (its charts are drawn by
`pipeline.tools.report_plots`), and `pipeline.tools.report_format` holds the
split names, limits and number formats they share.
"""
from __future__ import annotations

import datetime
import json
import sys
from collections import Counter
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline.media.bias_terms import TermsError, load_terms
from pipeline.core import layout
from pipeline.engine.audit import write_json
from pipeline.engine.writers import AtomicFile
from pipeline.tools.report import (
    CAPTION_MEASURES,
    IMAGE_MEASURES,
    Range,
    all_rows,
    kept_thumbnails,
    optout_rows,
    scan_ranges,
    stage_params,
    threshold_markers,
)
from pipeline.tools.report_format import KEPT, REJECTED, SPLITS, TOP_DOMAINS
from pipeline.tools.report_html import render_html
from pipeline.tools.report_optout import optout_report
from pipeline.tools.report_tallies import Aggregates, Report

OPTOUT_TOP_DOMAINS = 100  # in optout.json; audit.json and the page show TOP_DOMAINS
THUMBNAILS = 12


class ReportError(ValueError):
    """The folder cannot be reported on (no audit.json, unreadable audit)."""


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
