"""`curate takedown`: remove opted-out (or hash-listed) samples from a dataset that is already built.

    curate takedown --dataset out/ --optout optout.txt --in-place
    curate takedown --dataset out/ --optout optout.txt --output out-v2/
    curate takedown --dataset out/ --hashlist known_bad=bad.txt --in-place   (pipeline/tools/takedown_hashlist.py)

1. Check: the whole dataset is checked before anything is written
   (pipeline/engine/built_dataset.py: `_SUCCESS`, no temporary files, every tar with
   its parquet and the same samples, an audit that adds up against the
   files).  A problem is refused with an error naming it; nothing changes.
2. Stage: every shard's metadata is matched (url, prefix and domain rules on
   `url`, sha256 rules on `sha256`, the hash of the original bytes; phash rules
   on the stored image, decoded from the shard).  The new versions of the
   affected shards and rejects files, the new `report/audit.json` and a removal
   manifest are written into `<target>/.takedown-staging/`; with `--output`,
   every other file (unaffected shards, rejects, report, recipe.json) is
   hard-linked (or copied) there too, so no shard is left behind.  A failure
   here removes the staging folder: the dataset is exactly as it was.
3. Switch (pipeline/tools/staged_switch.py): a plan is committed, then the staged
   files are renamed into place with `_SUCCESS` removed meanwhile.  A crash
   after the commit is finished by running the takedown again.

A shard's embeddings `.npz` (pipeline.engine.embedding_files) loses the same rows,
so it keeps one row per remaining sample, in order.

Shards are found by listing the files and keys are read from them: a shard's
file name is never derived from a key.  A shard left empty stays as an empty
shard (an empty tar and a parquet with no rows), so shard numbers keep no gap
and the audit's brace pattern still names every file.

Accounting: the removed rows are appended to `rejects/<shard>.parquet` (stage
`takedown`, reason `optout_list`, the matched rule in `fields.optout_rule`;
with hash lists reason `hashlist` and `fields.hashlist_name/_kind/_distance`),
and `report/audit.json`'s kept and rejected counts move by the rows removed, so
`input == kept + rejected` keeps holding.  A removal manifest
`report/takedown-<UTC time>.json` lists what was removed (key, url, shard,
rule, time).  A second run with the same list finds nothing more to remove.

What decides a removal is a `SampleMatcher` (one metadata row, and the stored
image if it needs one, in; the rule that matched or None out): the opt-out
list's, or known-bad hash lists' (`--hashlist`).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import sys
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.core import layout
from pipeline.core.layout import IMAGE_EXTENSIONS, OutputLayout
from pipeline.engine import audit, embedding_files
from pipeline.media.optout.rule_list import OptOutListError, load_optout_list
from pipeline.engine.built_dataset import (Dataset, DatasetError, Shard, is_local, link_or_copy, match, member_key,
                                           metadata_rows, open_dataset, open_file, read_npz, read_parquet,
                                           shard_images)
from pipeline.engine.output_lock import OutputLockedError, lock_output_folder
from pipeline.core.records import METADATA_COLUMNS, REJECTS_SCHEMA, Reject
from pipeline.tools.staged_switch import StagedSwitch, StalePlanError, recover
from pipeline.core.params import ParamError
from pipeline.media.hash_lists import HashListError
from pipeline.tools.takedown_hashlist import EPILOG as HASHLIST_EPILOG
from pipeline.tools.takedown_hashlist import add_hashlist_arguments, matcher_of_args
from pipeline.tools.takedown_match import OptOutListMatcher, SampleMatcher

STAGE = "takedown"
_IMAGE_FIELDS = ("width", "height", "original_width", "original_height", "sha256")

EPILOG = """\
Opt-out list (--optout): one kind:value rule per line ('#' comments), or a
CSV/Parquet file with columns kind,value:
  domain:example.com                  the host and its subdomains
  url:https://example.com/a.jpg       exactly this URL (normalised)
  prefix:https://example.com/gallery/ URLs starting with this
  sha256:<64 hex>                     the original downloaded bytes
  phash:<16 hex>                      str(imagehash.phash(image)), within --phash-distance

The dataset is checked whole first (_SUCCESS, every tar with its parquet and
the same samples, no temporary files, an audit that adds up); a problem is
refused and nothing changes.  New files are staged in .takedown-staging/ and
switched in at the end; if that is interrupted, run the same command again.

Writes (in the dataset, or in --output):
  shards/...                          affected shards rewritten (tar, parquet, embeddings .npz), others
                                      untouched (or hard-linked)
  rejects/<shard>.parquet             removed rows appended: stage takedown, reason optout_list (or hashlist)
  report/audit.json                   counts moved: input = kept + rejected
  report/takedown-<UTC time>.json     the removal manifest: key, url, shard, rule, time
Running it again with the same list removes nothing more.

""" + HASHLIST_EPILOG


class TakedownError(Exception):
    """A problem with the output folder or the dataset's rows: printed, not traced."""


USER_ERRORS = (TakedownError, DatasetError, OutputLockedError, StalePlanError, OptOutListError,
               audit.AccountingError, HashListError, ParamError)


# ------------------------------------------------------------ command line


def add_takedown_command(subparsers) -> None:
    """Add `curate takedown` to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "takedown",
        help="remove opted-out or hash-listed samples from a built dataset",
        description="Remove the samples an opt-out list (or known-bad hash lists) match from a dataset that is already built "
        "(WebDataset tar+parquet or Parquet shards), rewriting only the affected shards, "
        "and record the removals in the rejects, the audit and a removal manifest.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, help="the dataset folder (the --output of `curate run`)")
    lists = parser.add_mutually_exclusive_group(required=True)
    lists.add_argument("--optout", help="opt-out list: text (kind:value lines), .csv or .parquet")
    add_hashlist_arguments(parser, lists)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", help="write the cleaned dataset here (unaffected shards are hard-linked when possible)")
    where.add_argument("--in-place", action="store_true", help="rewrite the affected shards of --dataset itself")
    parser.add_argument(
        "--phash-distance", type=int, default=4, metavar="BITS",
        help="max Hamming distance (of 64 bits) for phash rules (default: 4, as the optout stage)",
    )
    parser.set_defaults(handler=_cmd_takedown)


def _cmd_takedown(args, beam_args: list[str]) -> int:
    try:
        result = takedown(args.dataset, args.optout, None if args.in_place else args.output, args.phash_distance,
                          matcher=matcher_of_args(args))
    except USER_ERRORS as err:
        print(f"curate: error: {err}", file=sys.stderr)
        return 2
    print(
        f"takedown: removed {len(result.removals)} sample(s), rewrote {len(result.rewritten)} of "
        f"{result.shards} shard(s); manifest {result.manifest_path}"
    )
    return 0


# ------------------------------------------------------------ the takedown


@dataclass
class Removal:
    key: str
    url: str
    shard: str
    rule: str
    removed_at: str


@dataclass
class TakedownResult:
    dataset: str
    shards: int
    removals: list[Removal] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    manifest_path: str = ""


def takedown(
    dataset: str,
    optout_path: str | None = None,
    output: str | None = None,
    phash_distance: int = 4,
    progress: Callable[[str], None] = print,
    matcher: SampleMatcher | None = None,
) -> TakedownResult:
    """Remove what `optout_path` (or, instead, `matcher`) matches from `dataset`, in place or into `output`."""
    source = dataset.rstrip("/")
    target = (output or dataset).rstrip("/")
    if matcher is None:
        if optout_path is None:
            raise TakedownError("nothing to match: give an opt-out list or hash lists")
        matcher = OptOutListMatcher(load_optout_list(optout_path), phash_distance, optout_path)
    with _locked(source, target):
        recovered = recover(target)
        if recovered:
            progress(f"takedown: {recovered}")
        built = open_dataset(source)
        if target != source:
            _check_output_folder(source, target)
        switch = StagedSwitch(target)
        try:
            result = _stage_takedown(built, switch, matcher, progress)
            plan = switch.commit()
        except BaseException:
            switch.discard()
            raise
        switch.switch(plan)
    return result


@contextlib.contextmanager
def _locked(source: str, target: str) -> Iterator[None]:
    """The dataset's lock, and the output folder's (created for it, and removed again if the takedown fails)."""
    if is_local(source) and not os.path.isdir(source):
        raise DatasetError(f"{source}: no such folder: not a dataset written by `curate run`")
    with lock_output_folder(source):
        if target == source:
            yield
            return
        created = is_local(target) and not os.path.exists(target)
        if created:
            os.makedirs(target)
        try:
            with lock_output_folder(target):
                yield
        except BaseException:
            if created:  # the takedown failed: no folder of ours is left behind either
                FileSystems.delete([target])
            raise


def _check_output_folder(source: str, target: str) -> None:
    if is_local(source, target) and os.path.realpath(target).startswith(os.path.realpath(source) + os.sep):
        raise TakedownError(f"--output {target} is inside the dataset {source}; choose a folder outside it")
    paths = OutputLayout(target)
    if match(f"{paths.shards}/*") or match(f"{paths.report}/*") or FileSystems.exists(paths.success):
        raise TakedownError(f"{target} already holds a dataset; choose an empty --output folder")


def _stage_takedown(built: Dataset, switch: StagedSwitch, matcher: SampleMatcher,
                    progress: Callable[[str], None]) -> TakedownResult:
    """Write the new files into the staging folder; returns what they remove."""
    started = _utc_now()
    result = TakedownResult(dataset=built.path, shards=len(built.shards))
    for number, shard in enumerate(built.shards, start=1):
        removals = _stage_shard(shard, built, switch, matcher, started)
        result.removals += removals
        if removals:
            result.rewritten.append(shard.name)
        state = f"removed {len(removals)}" if removals else "unchanged"
        progress(f"takedown: shard {shard.name} ({number}/{len(built.shards)}): {state}")
    if switch.folder != built.path:
        _stage_copies(built.path, switch)
    manifest = _manifest_name(built.path)  # with --output, the source's manifests are copied over
    result.manifest_path = f"{switch.folder}/{manifest}"
    summary = {**matcher.about(), "removed": len(result.removals), "shards_rewritten": result.rewritten,
               "started_at": started}
    _write_manifest(switch.stage(manifest), built.path, switch.folder, result, summary)
    new_audit = _updated_audit(built.audit, len(result.removals), matcher.reason,
                               {**summary, "manifest": manifest.rpartition("/")[2]})
    audit.write_json(switch.stage(layout.AUDIT), new_audit)
    return result


def _stage_copies(source: str, switch: StagedSwitch) -> None:
    """With --output: every file the takedown does not rewrite is linked (or copied) over."""
    changed = {*switch.moves, layout.AUDIT}  # the audit is written new
    paths = OutputLayout(source)
    files = [*match(paths.shards_glob("tar")), *match(paths.shards_glob("parquet")), *match(paths.shards_glob("npz")),
             *match(paths.path(layout.shard_stats_file("*"))), *match(paths.rejects_glob), *match(f"{paths.report}/*"),
             *match(paths.recipe)]
    for path in files:
        relative = paths.relative(path)
        if relative not in changed:
            link_or_copy(path, switch.stage(relative))


# ------------------------------------------------------------ one shard


def _stage_shard(shard: Shard, built: Dataset, switch: StagedSwitch, matcher: SampleMatcher,
                 when: str) -> list[Removal]:
    """Stage the shard without its matched samples (and their rejects); [] and nothing staged if none match."""
    rows = metadata_rows(shard)
    matched = _matches(shard, rows, matcher)
    if not matched:
        return []
    removed_rows = [row for row in rows if row["key"] in matched]
    rejects = [_reject_of(row, matched[row["key"]], matcher) for row in removed_rows]
    _stage_rejects(built.path, switch, shard.name, rejects)
    _stage_rewritten_shard(shard, switch, set(matched))
    _stage_stats(built.path, shard, switch, len(matched), matcher.reason)
    return [Removal(row["key"], row["url"], shard.name, matched[row["key"]], when) for row in removed_rows]


def _matches(shard: Shard, rows: list[dict[str, Any]], matcher: SampleMatcher) -> dict[str, str]:
    """key -> the rule that matched, for the shard's samples the matcher removes."""
    matched = {row["key"]: rule for row in rows if (rule := matcher.match_row(row)) is not None}
    unmatched = {row["key"]: row for row in rows if row["key"] not in matched}
    if matcher.needs_images and unmatched:
        for stored in shard_images(shard, set(unmatched)):
            rule = matcher.match_image(unmatched[stored.key], stored.image)
            if rule is not None:
                matched[stored.key] = rule
    return matched


def _stage_rewritten_shard(shard: Shard, switch: StagedSwitch, removed: set[str]) -> None:
    """The shard without `removed`; an emptied shard stays as an empty one, so shard numbers keep no gap."""
    names = [layout.shard_file(shard.name, extension) for extension in ("parquet", "tar")[:1 + bool(shard.tar_path)]]
    if shard.tar_path is not None:
        _filter_tar(shard.tar_path, switch.stage(names[1]), removed)
    if shard.npz_path is not None:  # the embeddings keep one row per remaining sample, in order
        arrays = embedding_files.without_keys(read_npz(shard.npz_path), removed)
        with FileSystems.create(switch.stage(f"shards/{shard.name}.npz")) as handle:
            embedding_files.write_npz(handle, arrays)
    table = read_parquet(shard.metadata_path)
    kept = table.filter(pc.invert(pc.is_in(table.column("key"), pa.array(sorted(removed), pa.string()))))
    _write_parquet(switch.stage(names[0]), kept)


def _stage_stats(dataset: str, shard: Shard, switch: StagedSwitch, removed: int, reason: str) -> None:
    """The shard's img2dataset `_stats.json` with the removed samples moved from success to the takedown."""
    relative = layout.shard_stats_file(shard.name)
    path = OutputLayout(dataset).path(relative)
    if not FileSystems.exists(path):
        return
    with open_file(path) as handle:
        stats = json.load(handle)
    status = dict(stats.get("status_dict", {}))
    status["success"] = status.get("success", 0) - removed
    status[f"{STAGE}/{reason}"] = status.get(f"{STAGE}/{reason}", 0) + removed
    stats.update(successes=stats.get("successes", 0) - removed, filtered=stats.get("filtered", 0) + removed,
                 status_dict=dict(sorted(status.items(), key=lambda item: (-item[1], item[0]))))
    audit.write_json(switch.stage(relative), stats)


def _filter_tar(source_path: str, target_path: str, removed: set[str]) -> None:
    """Copy the tar member by member (names, modes, times as they were), leaving out `removed` keys."""
    with open_file(source_path) as handle, tarfile.open(fileobj=handle, mode="r|") as source_tar, \
            FileSystems.create(target_path) as out, \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as target_tar:
        for member in source_tar:
            if member_key(member.name)[0] in removed:
                continue
            target_tar.addfile(member, source_tar.extractfile(member) if member.isfile() else None)


def _write_parquet(path: str, table: pa.Table) -> None:
    with FileSystems.create(path) as handle:
        pq.write_table(table, handle, compression="zstd")


# ------------------------------------------------------------ accounting


def _reject_of(row: dict[str, Any], rule: str, matcher: SampleMatcher) -> Reject:
    """A metadata row as a reject; input columns and scores cannot be told apart
    once flattened into the metadata, so all extra columns go to `extra` (but
    what the matcher withholds: a hash list's hashes are not repeated)."""
    basics = set(METADATA_COLUMNS) | set(IMAGE_EXTENSIONS) | {"status", "error_message"} | matcher.withheld
    shown = [name for name in _IMAGE_FIELDS if name not in matcher.withheld and row.get(name) is not None]
    return Reject(
        key=row["key"],
        shard_id=int(row.get("shard_id") or 0),
        url=row.get("url") or "",
        caption=row.get("caption"),
        stage=STAGE,
        reason=matcher.reason,
        fields={**{name: row[name] for name in shown}, **matcher.reject_fields(rule)},
        extra={name: value for name, value in row.items() if name not in basics},
    )


def _stage_rejects(dataset: str, switch: StagedSwitch, shard_name: str, rejects: list[Reject]) -> None:
    """The shard's rejects file with `rejects` added, staged (the name of the shard's file, not of its keys)."""
    relative = layout.rejects_file(shard_name)
    path = f"{dataset}/{relative}"
    existing = read_parquet(path).to_pylist() if FileSystems.exists(path) else []
    twice = {row["key"] for row in existing} & {reject.key for reject in rejects}
    if twice:
        raise DatasetError(f"{dataset} was not changed: {relative} already rejects {sorted(twice)[:3]}, "
                           f"which {layout.shard_file(shard_name, 'parquet')} also holds")
    rows = sorted(existing + [reject.row() for reject in rejects], key=lambda row: row["key"])
    _write_parquet(switch.stage(relative), pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA))


def _updated_audit(before: dict[str, Any], removed: int, reason: str, takedown_summary: dict[str, Any]) -> dict[str, Any]:
    """The audit with `removed` rows moved from kept to the takedown's rejects.

    The dataset was checked to match its audit, so moving the counts keeps
    them equal to a recount of the files."""
    result = {**before, "counts": dict(before["counts"]), "stage_order": list(before.get("stage_order", []))}
    if STAGE not in result["stage_order"]:
        result["stage_order"].append(STAGE)
    counts = result["counts"]
    counts["kept"] -= removed
    by_stage = {stage: dict(reasons) for stage, reasons in counts["rejected_by_stage"].items()}
    if removed:
        by_stage.setdefault(STAGE, {})[reason] = by_stage.get(STAGE, {}).get(reason, 0) + removed
    order = result["stage_order"]
    counts["rejected_by_stage"] = {
        stage: by_stage[stage] for stage in sorted(by_stage, key=lambda s: (order.index(s) if s in order else len(order), s))
    }
    if isinstance(result.get("shards"), dict):  # the brace pattern stays; its sample count drops
        result["shards"] = {**result["shards"], "samples": result["shards"].get("samples", 0) - removed}
    result["takedowns"] = [*before.get("takedowns", []), {**takedown_summary, "finished_at": _utc_now()}]
    audit.check_accounting(result)
    return result


def _manifest_name(dataset: str) -> str:
    """The removal manifest's path relative to the dataset: report/takedown-<UTC time>.json."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name, number = layout.takedown_manifest(stamp), 1
    while FileSystems.exists(OutputLayout(dataset).path(name)):  # two takedowns within one second
        number += 1
        name = layout.takedown_manifest(f"{stamp}-{number}")
    return name


def _write_manifest(path: str, source: str, target: str, result: TakedownResult, summary: dict[str, Any]) -> None:
    manifest = {
        "dataset": source,
        "output": target,
        **summary,
        "by_rule_kind": dict(collections.Counter(r.rule.partition(":")[0] for r in result.removals)),
        "finished_at": _utc_now(),
        "removals": [vars(removal) for removal in result.removals],
    }
    audit.write_json(path, manifest)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
