"""The run's accounting: report/audit.json, the summary table, and _SUCCESS.

`counts.input == counts.kept + sum(rejected_by_stage)` always holds for a
finished run, and so does the `inputs` check (each input file's physical
records are all in its rows, see pipeline/textlines.FileTally, and the files'
rows and read rejects add up to the counts); if either does not, finalising
fails and `_SUCCESS` is not written.
"""
from __future__ import annotations

import datetime
import json
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline.core import layout
from pipeline.engine.writers import write_json


class AccountingError(RuntimeError):
    """Rows were lost or counted twice: the output must not be trusted."""


def merge_counts(summaries) -> dict[str, int]:
    total: dict[str, int] = {}
    for summary in summaries:
        for name, count in summary.items():
            total[name] = total.get(name, 0) + count
    return total


def build_audit(
    input_rows: int,
    counts: dict[str, int],
    stage_reports: list[tuple[str, str, dict]],
    order: list[str],
    recipe: dict[str, Any],
    inputs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    by_stage: dict[str, dict[str, int]] = {}
    for name, count in sorted(counts.items()):
        if name.startswith("rejected/"):
            _, stage, reason = name.split("/", 2)
            by_stage.setdefault(stage, {})[reason] = count
    by_stage = {stage: by_stage[stage] for stage in sorted(by_stage, key=_position_in(order))}
    result = {
        "counts": {"input": input_rows, "kept": counts.get("kept", 0), "rejected_by_stage": by_stage},
        "stage_order": order,
    }
    if inputs is not None:
        result["inputs"] = sorted(inputs, key=lambda entry: entry["path"])
    for section, stage, report in sorted(stage_reports, key=lambda r: r[:2]):
        result.setdefault(section, {})[stage] = report
    result["recipe"] = recipe
    result["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return result


def _position_in(order: list[str]):
    return lambda stage: (order.index(stage) if stage in order else len(order), stage)


def check_accounting(audit: dict[str, Any]) -> None:
    counts = audit["counts"]
    rejected = sum(sum(reasons.values()) for reasons in counts["rejected_by_stage"].values())
    if counts["input"] != counts["kept"] + rejected:
        raise AccountingError(
            f"accounting mismatch: {counts['input']} input rows but {counts['kept']} kept + {rejected} rejected"
        )
    if "inputs" in audit:
        _check_inputs(audit["inputs"], counts)


def _check_inputs(inputs: list[dict[str, Any]], counts: dict[str, Any]) -> None:
    """Every input file's physical records are in its rows; the files' rows and read rejects are the counts'."""
    for entry in inputs:
        records = entry["physical_records"]
        in_rows = entry["rows"] - entry["multiline_rows"] + entry["lines_in_multiline_rows"]
        if records is not None and records != in_rows:
            raise AccountingError(f"{entry['path']}: {records} physical records but {in_rows} accounted in rows")
    rows = sum(entry["rows"] for entry in inputs)
    if rows != counts["input"]:
        raise AccountingError(f"accounting mismatch: the input files gave {rows} rows, the run counted {counts['input']}")
    read_rejects: dict[str, int] = merge_counts(entry["rejected_at_read"] for entry in inputs)
    if read_rejects != counts["rejected_by_stage"].get("read", {}):
        raise AccountingError(f"accounting mismatch: the input files' read rejects {read_rejects} are not the counts'")


def finalize(
    counts: dict[str, int],
    input_rows: int,
    stage_reports: list[tuple[str, str, dict]],
    order: list[str],
    recipe: dict[str, Any],
    output_dir: str,
    inputs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write the audit, check the invariant, then mark the output complete."""
    audit = build_audit(input_rows, counts, stage_reports, order, recipe, inputs)
    audit["shards"] = shard_listing(output_dir, counts.get("shards", 0), counts.get("kept", 0), recipe["output"])
    paths = layout.OutputLayout(output_dir)
    if not FileSystems.exists(paths.shards):
        FileSystems.mkdirs(paths.shards)  # a run that kept nothing still has its (empty) shards folder
    write_json(paths.audit, audit)
    check_accounting(audit)
    with FileSystems.create(paths.success) as handle:
        handle.write(b"")
    return audit


def shard_listing(output_dir: str, shards: int, samples: int, output: dict[str, Any]) -> dict[str, Any]:
    """The shards as a trainer takes them: a brace pattern (`{00000..00077}`) and the sample count."""
    extension = "tar" if output["format"] == "webdataset" else "parquet"
    digits = len(f"{max(shards - 1, 0):0{output['shard_digits']}d}")
    last = f"{shards - 1:0{digits}d}"
    braces = f"{{{'0' * digits}..{last}}}"
    pattern = layout.OutputLayout(output_dir).shard(braces, extension) if shards else None
    return {"count": shards, "samples": samples, "pattern": pattern}


def read_audit(output_dir: str) -> dict[str, Any]:
    with FileSystems.open(layout.OutputLayout(output_dir).audit) as handle:
        return json.loads(handle.read())


def summary_table(audit: dict[str, Any]) -> str:
    counts = audit["counts"]
    total = counts["input"] or 1
    lines = [f"{'stage':<16} {'reason':<28} {'rows':>9} {'share':>7}"]
    lines.append("-" * len(lines[0]))
    lines.append(f"{'input':<16} {'':<28} {counts['input']:>9} {100.0:>6.1f}%")
    for stage, reasons in counts["rejected_by_stage"].items():
        for reason, n in sorted(reasons.items(), key=lambda item: -item[1]):
            lines.append(f"{stage:<16} {reason:<28} {n:>9} {100 * n / total:>6.1f}%")
    lines.append(f"{'kept':<16} {'':<28} {counts['kept']:>9} {100 * counts['kept'] / total:>6.1f}%")
    shards = audit.get("shards")
    if shards:
        where = shards["pattern"] or "no shards (nothing kept)"
        lines.append(f"shard pattern: {where}  ({shards['count']} shards, {shards['samples']} samples)")
    return "\n".join(lines)
