"""`curate takedown`: remove opted-out samples from a dataset that is already built.

    curate takedown --dataset out/ --optout optout.txt --in-place
    curate takedown --dataset out/ --optout optout.txt --output out-v2/

Every shard's metadata is matched against the opt-out list (url, prefix and
domain rules on `url`, sha256 rules on `sha256`, the hash of the original
bytes; phash rules on the stored image, decoded from the shard).  Only shards
with matches are rewritten, each file under a temporary name renamed into
place; unaffected shards are hard-linked (or copied) into `--output`.  A shard
left empty is deleted, as a run writes no shard without samples.

Accounting: the removed rows are appended to `rejects/<shard>.parquet` (stage
`takedown`, reason `optout_list`, the matched rule in `fields.optout_rule`),
and `report/audit.json`'s kept and rejected counts are recounted from the
shard and rejects files, so `input == kept + rejected` keeps holding.  A
removal manifest `report/takedown-<UTC time>.json` lists what was removed
(key, url, shard, rule, time).

Safe to interrupt and repeat: `_SUCCESS` is removed first and written last;
rejects are appended before the shard is rewritten, and never twice for a key;
a second run with the same list finds nothing more to remove.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import io
import os
import shutil
import sys
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from pipeline import audit
from pipeline import optout_rules as rules
from pipeline.schema import METADATA_COLUMNS, REJECTS_SCHEMA, Reject
from pipeline.writers import AtomicFile, write_parquet_atomically

STAGE = "takedown"
IMAGE_EXTENSIONS = ("jpg", "png", "webp")
_IMAGE_FIELDS = ("width", "height", "original_width", "original_height", "sha256")

EPILOG = """\
Opt-out list (--optout): one kind:value rule per line ('#' comments), or a
CSV/Parquet file with columns kind,value:
  domain:example.com                  the host and its subdomains
  url:https://example.com/a.jpg       exactly this URL (normalised)
  prefix:https://example.com/gallery/ URLs starting with this
  sha256:<64 hex>                     the original downloaded bytes
  phash:<16 hex>                      str(imagehash.phash(image)), within --phash-distance

Writes (in the dataset, or in --output):
  shards/...                          affected shards rewritten, others untouched (or hard-linked)
  rejects/<shard>.parquet             removed rows appended: stage takedown, reason optout_list
  report/audit.json                   counts recounted: input = kept + rejected
  report/takedown-<UTC time>.json     the removal manifest: key, url, shard, rule, time
Running it again with the same list removes nothing more.
"""


class TakedownError(Exception):
    """A problem with the dataset, the list or the output folder: printed, not traced."""


# ------------------------------------------------------------ command line


def add_takedown_command(subparsers) -> None:
    """Add `curate takedown` to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "takedown",
        help="remove opted-out samples from a built dataset",
        description="Remove the samples an opt-out list matches from a dataset that is already built "
        "(WebDataset tar+parquet or Parquet shards), rewriting only the affected shards, "
        "and record the removals in the rejects, the audit and a removal manifest.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, help="the dataset folder (the --output of `curate run`)")
    parser.add_argument("--optout", required=True, help="opt-out list: text (kind:value lines), .csv or .parquet")
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
        result = takedown(args.dataset, args.optout, None if args.in_place else args.output, args.phash_distance)
    except (TakedownError, rules.OptOutListError, audit.AccountingError) as err:
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


@dataclass(frozen=True)
class Shard:
    name: str  # "00000"
    metadata_path: str  # shards/00000.parquet (also the image table in the parquet format)
    tar_path: str | None  # shards/00000.tar for webdataset


def takedown(
    dataset: str,
    optout_path: str,
    output: str | None = None,
    phash_distance: int = 4,
    progress: Callable[[str], None] = print,
) -> TakedownResult:
    """Remove what `optout_path` matches from `dataset`, in place or into `output`."""
    source = dataset.rstrip("/")
    target = (output or dataset).rstrip("/")
    optout_list = rules.load_optout_list(optout_path)
    shards = list_shards(source)
    _prepare_target(source, target)
    started = _utc_now()
    result = TakedownResult(dataset=source, shards=len(shards))
    for number, shard in enumerate(shards, start=1):
        removals = _take_down_shard(shard, source, target, optout_list, phash_distance, started)
        result.removals += removals
        if removals:
            result.rewritten.append(shard.name)
        state = f"removed {len(removals)}" if removals else "unchanged"
        progress(f"takedown: shard {shard.name} ({number}/{len(shards)}): {state}")
    summary = {"list": optout_path, "list_rules": optout_list.counts(), "removed": len(result.removals),
               "shards_rewritten": result.rewritten, "started_at": started}
    result.manifest_path = _write_manifest(target, source, result, summary)
    _update_audit(target, {**summary, "manifest": result.manifest_path.rpartition("/")[2]})
    with FileSystems.create(f"{target}/{audit.SUCCESS_FILE}") as handle:
        handle.write(b"")
    return result


def list_shards(dataset: str) -> list[Shard]:
    metadata_paths = _glob(f"{dataset}/shards/*.parquet")
    if not metadata_paths and not _glob(f"{dataset}/shards/*.tar"):
        raise TakedownError(f"{dataset}: no shards/*.parquet: not a dataset written by `curate run`")
    shards = []
    for path in metadata_paths:
        name = path.rpartition("/")[2].removesuffix(".parquet")
        tar_path = f"{dataset}/shards/{name}.tar"
        shards.append(Shard(name, path, tar_path if FileSystems.exists(tar_path) else None))
    return shards


def _prepare_target(source: str, target: str) -> None:
    if target == source:
        if FileSystems.exists(f"{source}/{audit.SUCCESS_FILE}"):
            FileSystems.delete([f"{source}/{audit.SUCCESS_FILE}"])  # incomplete until the audit is rewritten
        return
    if _glob(f"{target}/shards/*") or _glob(f"{target}/report/*") or FileSystems.exists(f"{target}/{audit.SUCCESS_FILE}"):
        raise TakedownError(f"{target} already holds a dataset; choose an empty --output folder")
    for path in [f"{source}/recipe.json", *_glob(f"{source}/rejects/*.parquet"), *_glob(f"{source}/report/*")]:
        if FileSystems.exists(path):
            _copy(path, target + path[len(source):])


# ------------------------------------------------------------ one shard


def _take_down_shard(shard: Shard, source: str, target: str, optout_list: rules.OptOutList,
                     phash_distance: int, when: str) -> list[Removal]:
    table = _read_parquet(shard.metadata_path)
    rows = table.to_pylist()
    matched = _match_rows(rows, optout_list)
    unmatched = {row["key"]: row for row in rows if row["key"] not in matched}
    if optout_list.has_phash and unmatched:
        for key, image in _shard_images(shard, table, set(unmatched)):
            match = _phash_match(image, unmatched[key], optout_list, phash_distance)
            if match:
                matched[key] = match
    if not matched:
        if target != source:
            for path in filter(None, (shard.metadata_path, shard.tar_path)):
                _copy(path, target + path[len(source):])
        return []
    removed_rows = [row for row in rows if row["key"] in matched]
    _append_rejects(target, shard.name, [_reject_of(row, matched[row["key"]]) for row in removed_rows])
    _rewrite_shard(shard, source, target, table, set(matched))
    return [Removal(row["key"], row["url"], shard.name, matched[row["key"]], when) for row in removed_rows]


def _match_rows(rows: list[dict[str, Any]], optout_list: rules.OptOutList) -> dict[str, str]:
    """key -> the rule (as text) for rows matched by url/prefix/domain or sha256."""
    matched = {}
    for row in rows:
        rule = optout_list.match_url(row.get("url")) or optout_list.match_sha256(row.get("sha256"))
        if rule is not None:
            matched[row["key"]] = str(rule)
    return matched


def _phash_match(image: bytes, row: dict[str, Any], optout_list: rules.OptOutList, distance: int) -> str | None:
    try:
        phash = rules.phash_of_image(image, (row.get("original_width"), row.get("original_height")))
    except (OSError, ValueError):
        return None  # an undecodable stored image cannot be compared
    match = optout_list.match_phash(phash, distance)
    return f"{match.rule} (distance {match.distance})" if match else None


def _shard_images(shard: Shard, table: pa.Table, keys: set[str]) -> Iterator[tuple[str, bytes]]:
    """(key, stored image bytes) for `keys`, streamed from the tar or read from the table."""
    if shard.tar_path is not None:
        with _open(shard.tar_path) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for member in tar:
                key, _, extension = member.name.rpartition("/")[2].partition(".")
                if key in keys and extension in IMAGE_EXTENSIONS:
                    yield key, tar.extractfile(member).read()
        return
    columns = [name for name in IMAGE_EXTENSIONS if name in table.column_names]
    for row in table.select(["key", *columns]).to_pylist():
        image = next((row[name] for name in columns if row[name]), None)
        if row["key"] in keys and image:
            yield row["key"], image


def _rewrite_shard(shard: Shard, source: str, target: str, table: pa.Table, removed: set[str]) -> None:
    kept = table.filter(pc.invert(pc.is_in(table.column("key"), pa.array(sorted(removed), pa.string()))))
    metadata_target = target + shard.metadata_path[len(source):]
    tar_target = target + shard.tar_path[len(source):] if shard.tar_path else None
    if kept.num_rows == 0:  # a run writes no empty shard; nor do we
        existing = [path for path in (metadata_target, tar_target) if path and FileSystems.exists(path)]
        if target == source and existing:
            FileSystems.delete(existing)
        return
    if shard.tar_path is not None:
        _filter_tar(shard.tar_path, tar_target, removed)
    write_parquet_atomically(metadata_target, kept)


def _filter_tar(source_path: str, target_path: str, removed: set[str]) -> None:
    """Copy the tar member by member (names, modes, times as they were), leaving out `removed` keys."""
    out = AtomicFile(target_path)
    try:
        with _open(source_path) as handle, tarfile.open(fileobj=handle, mode="r|") as source_tar, \
                tarfile.open(fileobj=out.handle, mode="w|", format=tarfile.USTAR_FORMAT) as target_tar:
            for member in source_tar:
                if member.name.rpartition("/")[2].partition(".")[0] in removed:
                    continue
                target_tar.addfile(member, source_tar.extractfile(member) if member.isfile() else None)
    except BaseException:
        out.abort()
        raise
    out.commit()


# ------------------------------------------------------------ accounting


def _reject_of(row: dict[str, Any], rule: str) -> Reject:
    """A metadata row as a reject; input columns and scores cannot be told apart
    once flattened into the metadata, so all extra columns go to `extra`."""
    basics = set(METADATA_COLUMNS) | set(IMAGE_EXTENSIONS)
    return Reject(
        key=row["key"],
        shard_id=int(row.get("shard_id") or 0),
        url=row.get("url") or "",
        caption=row.get("caption"),
        stage=STAGE,
        reason=rules.REASON_LIST,
        fields={**{name: row[name] for name in _IMAGE_FIELDS if row.get(name) is not None}, rules.RULE_FIELD: rule},
        extra={name: value for name, value in row.items() if name not in basics},
    )


def _append_rejects(target: str, shard_name: str, rejects: list[Reject]) -> None:
    path = f"{target}/rejects/{shard_name}.parquet"
    existing = _read_parquet(path).to_pylist() if FileSystems.exists(path) else []
    known = {row["key"] for row in existing}
    rows = existing + [reject.row() for reject in rejects if reject.key not in known]
    rows.sort(key=lambda row: row["key"])
    write_parquet_atomically(path, pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA))


def _update_audit(target: str, takedown_summary: dict[str, Any]) -> None:
    """Recount kept and rejected rows from the files, so an interrupted and
    repeated takedown still ends with exact counts."""
    path = f"{target}/report/audit.json"
    if not FileSystems.exists(path):
        raise TakedownError(f"{path} is missing: cannot keep the accounting (is this a `curate run` output?)")
    result = audit.read_audit(target)
    rejected: collections.Counter[tuple[str, str]] = collections.Counter()
    for rejects_path in _glob(f"{target}/rejects/*.parquet"):
        table = _read_parquet(rejects_path, columns=["stage", "reason"])
        rejected.update(zip(table.column("stage").to_pylist(), table.column("reason").to_pylist()))
    order = list(result.get("stage_order", []))
    if STAGE not in order:
        order.append(STAGE)
    by_stage: dict[str, dict[str, int]] = {}
    for (stage, reason), count in sorted(rejected.items()):
        by_stage.setdefault(stage, {})[reason] = count
    result["stage_order"] = order
    result["counts"]["kept"] = sum(_num_rows(path) for path in _glob(f"{target}/shards/*.parquet"))
    result["counts"]["rejected_by_stage"] = {
        stage: by_stage[stage] for stage in sorted(by_stage, key=lambda s: (order.index(s) if s in order else len(order), s))
    }
    result.setdefault("takedowns", []).append({**takedown_summary, "finished_at": _utc_now()})
    audit.write_json(path, result)
    audit.check_accounting(result)


def _write_manifest(target: str, source: str, result: TakedownResult, summary: dict[str, Any]) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path, number = f"{target}/report/takedown-{stamp}.json", 1
    while FileSystems.exists(path):  # two takedowns within one second
        number += 1
        path = f"{target}/report/takedown-{stamp}-{number}.json"
    manifest = {
        "dataset": source,
        "output": target,
        **summary,
        "by_rule_kind": dict(collections.Counter(r.rule.partition(":")[0] for r in result.removals)),
        "finished_at": _utc_now(),
        "removals": [vars(removal) for removal in result.removals],
    }
    audit.write_json(path, manifest)
    return path


# ------------------------------------------------------------ files


def _glob(pattern: str) -> list[str]:
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # Beam raises when nothing matches on some filesystems
        return []
    return sorted(m.path for m in matches if not m.path.rpartition("/")[2].startswith("."))


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    with _open(path) as handle:
        return pq.read_table(io.BytesIO(handle.read()), columns=columns)


def _num_rows(path: str) -> int:
    with _open(path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _copy(source_path: str, target_path: str) -> None:
    """Hard-link when both are local (the files are only ever replaced, never
    written in place, so sharing an inode is safe), else copy."""
    local = all(isinstance(FileSystems.get_filesystem(p), LocalFileSystem) for p in (source_path, target_path))
    if not local:
        FileSystems.copy([source_path], [target_path])
        return
    os.makedirs(os.path.dirname(target_path), exist_ok=True)
    try:
        os.link(source_path, target_path)
    except OSError:  # another filesystem, or links not supported
        shutil.copyfile(source_path, target_path)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
