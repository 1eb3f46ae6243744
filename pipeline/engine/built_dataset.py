"""Reading and checking a dataset that `curate run` wrote, without changing it.

`open_dataset(folder)` checks the whole dataset before anything may change it
(a takedown): `_SUCCESS` present, no half-written temporary files, every tar
with its parquet and every parquet with its tar (WebDataset), each tar holding
exactly the samples its parquet lists, each embeddings `.npz` (DataComp's
layout, pipeline.engine.embedding_files) beside a parquet and holding one row per
sample of it, in its order, and `report/audit.json` adding up both
in itself (`input == kept + rejected`) and against the files (kept = the shard
rows, rejected per stage and reason = the rejects rows).  Every problem found
is named in one `DatasetError`.

Shards are found by listing `shards/*.tar` and `shards/*.parquet`; a shard's
name is its file name.  Nothing here derives a file name from a sample key, so
shards numbered `00000..N-1` whatever input rows they hold read the same.
"""
from __future__ import annotations

import collections
import io
import json
import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from pipeline.engine import audit, embedding_files

IMAGE_EXTENSIONS = ("jpg", "png", "webp")
AUDIT_PATH = "report/audit.json"
# Where a takedown stages its new files (pipeline/tools/staged_switch.py); here only to be reported.
STAGING_DIR = ".takedown-staging"
_MAX_PROBLEMS_SHOWN = 10


class DatasetError(Exception):
    """The dataset is not complete or not consistent; the message names every problem found."""


@dataclass(frozen=True)
class Shard:
    name: str  # the file name without extension: "00000"
    metadata_path: str  # shards/<name>.parquet (also the image table in the parquet format)
    tar_path: str | None  # shards/<name>.tar for webdataset
    rows: int
    npz_path: str | None = None  # shards/<name>.npz when the run stored embeddings there


@dataclass
class Dataset:
    path: str
    format: str  # "webdataset" or "parquet"
    shards: list[Shard]
    audit: dict[str, Any]


def open_dataset(folder: str) -> Dataset:
    """The dataset at `folder`, checked whole; DatasetError naming every problem otherwise."""
    folder = folder.rstrip("/")
    parquets, tars, npzs = _names(folder, "parquet"), _names(folder, "tar"), _names(folder, "npz")
    if not parquets and not tars:
        raise DatasetError(f"{folder}: no shards/*.parquet: not a dataset written by `curate run`")
    problems = _unfinished_work(folder)
    fmt = _format(folder, tars)
    if fmt == "parquet" and tars:
        problems.append(f"shards/{sorted(tars)[0]}.tar: tar files in a dataset of format parquet")
    if fmt == "webdataset":
        problems += [f"shards/{name}.tar has no shards/{name}.parquet" for name in sorted(set(tars) - set(parquets))]
        problems += [f"shards/{name}.parquet has no shards/{name}.tar" for name in sorted(set(parquets) - set(tars))]
    problems += [f"shards/{name}.npz has no shards/{name}.parquet" for name in sorted(set(npzs) - set(parquets))]
    shards = []
    for name in sorted(set(parquets) & set(tars) if fmt == "webdataset" else parquets):
        shard, shard_problems = _check_shard(folder, name, fmt, name in npzs)
        shards.append(shard)
        problems += shard_problems
    result = None
    try:
        result = audit.read_audit(folder)
    except (OSError, ValueError) as err:
        problems.append(f"{AUDIT_PATH} cannot be read ({type(err).__name__}: {err}): the accounting cannot be kept")
    if result is not None:
        problems += _audit_problems(folder, result, sum(shard.rows for shard in shards))
    if problems:
        shown = problems[:_MAX_PROBLEMS_SHOWN] + [f"... {len(problems) - _MAX_PROBLEMS_SHOWN} more"] * (
            len(problems) > _MAX_PROBLEMS_SHOWN)
        raise DatasetError(f"{folder} was not changed: " + "; ".join(shown))
    return Dataset(folder, fmt, shards, result)


def _unfinished_work(folder: str) -> list[str]:
    problems = []
    if folder_exists(f"{folder}/{STAGING_DIR}"):
        problems.append(f"{STAGING_DIR}: an interrupted takedown; run `curate takedown --in-place` on it again to finish it")
    if not FileSystems.exists(f"{folder}/{audit.SUCCESS_FILE}"):
        problems.append(f"no {audit.SUCCESS_FILE}: the run that wrote it did not finish")
    for sub in ("", "shards/", "rejects/", "report/"):
        problems += [f"{path[len(folder) + 1:]}: a half-written temporary file (of a run that was killed?)"
                     for path in match(f"{folder}/{sub}.*.tmp", hidden=True)]
    return problems


def _format(folder: str, tars: dict[str, str]) -> str:
    """The recipe's output format; a dataset without recipe.json is WebDataset if it has tars."""
    try:
        with open_file(f"{folder}/recipe.json") as handle:
            return json.loads(handle.read())["output"]["format"]
    except (OSError, ValueError, KeyError, TypeError):
        return "webdataset" if tars else "parquet"


def _check_shard(folder: str, name: str, fmt: str, has_npz: bool) -> tuple[Shard, list[str]]:
    metadata_path = f"{folder}/shards/{name}.parquet"
    tar_path = f"{folder}/shards/{name}.tar" if fmt == "webdataset" else None
    npz_path = f"{folder}/shards/{name}.npz" if has_npz else None
    try:
        keys = read_parquet(metadata_path, columns=["key"]).column("key").to_pylist()
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        return Shard(name, metadata_path, tar_path, 0, npz_path), [f"shards/{name}.parquet cannot be read: {err}"]
    shard = Shard(name, metadata_path, tar_path, len(keys), npz_path)
    problems = _npz_problems(npz_path, name, keys) if npz_path else []
    if tar_path is None:
        return shard, problems
    try:
        samples = tar_samples(tar_path)
    except (OSError, tarfile.TarError) as err:
        return shard, problems + [f"shards/{name}.tar cannot be read: {err}"]
    missing, extra = sorted(set(keys) - set(samples)), sorted(set(samples) - set(keys))
    no_image = sorted(key for key, extensions in samples.items() if not set(extensions) & set(IMAGE_EXTENSIONS))
    twice = sorted(key for key, extensions in samples.items() if len(extensions) != len(set(extensions)))
    if missing or extra or no_image or twice or len(keys) != len(set(keys)):
        problems.append(f"shards/{name}.tar holds {len(samples)} samples ({len(no_image)} without an image, "
                        f"{len(twice)} with a member twice) "
                        f"but shards/{name}.parquet has {len(keys)} rows (first missing from the tar: "
                        f"{missing[:3]}, first not in the parquet: {extra[:3]})")
    return shard, problems


def _npz_problems(path: str, name: str, keys: list[str]) -> list[str]:
    try:
        return embedding_files.problems(name, read_npz(path), keys)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # numpy: ValueError for a damaged member
        return [f"shards/{name}.npz cannot be read: {err}"]


def read_npz(path: str) -> dict:
    with open_file(path) as handle:
        return embedding_files.read_npz(handle.read())


def tar_samples(path: str) -> dict[str, list[str]]:
    """key -> the extensions of its members, read from the tar headers only."""
    samples: dict[str, list[str]] = collections.defaultdict(list)
    with open_file(path) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        for member in tar:
            key, _, extension = member.name.rpartition("/")[2].partition(".")
            samples[key].append(extension)
    return samples


def _audit_problems(folder: str, result: dict[str, Any], shard_rows: int) -> list[str]:
    try:
        audit.check_accounting(result)
        counts = result["counts"]
        kept, by_stage = counts["kept"], counts["rejected_by_stage"]
    except (audit.AccountingError, KeyError, TypeError) as err:
        return [f"{AUDIT_PATH} does not add up: {err}"]
    problems = []
    if kept != shard_rows:
        problems.append(f"{AUDIT_PATH} counts {kept} kept rows but the shards hold {shard_rows}")
    try:
        on_file = count_rejects(folder)
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        return problems + [f"rejects/ cannot be read: {err}"]
    counted = {(stage, reason): n for stage, reasons in by_stage.items() for reason, n in reasons.items() if n}
    if counted != on_file:
        differ = sorted(set(counted.items()) ^ set(on_file.items()))[:3]
        problems.append(f"{AUDIT_PATH} rejected counts differ from the rows in rejects/ (e.g. {differ}, audit vs files)")
    return problems


def count_rejects(folder: str) -> dict[tuple[str, str], int]:
    """(stage, reason) -> rows in rejects/*.parquet."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for path in match(f"{folder}/rejects/*.parquet"):
        table = read_parquet(path, columns=["stage", "reason"])
        counts.update(zip(table.column("stage").to_pylist(), table.column("reason").to_pylist()))
    return dict(counts)


# ------------------------------------------------------------ files


def _names(folder: str, extension: str) -> dict[str, str]:
    return {path.rpartition("/")[2].removesuffix(f".{extension}"): path
            for path in match(f"{folder}/shards/*.{extension}")}


def match(pattern: str, hidden: bool = False) -> list[str]:
    """Paths matching `pattern`, sorted; dot-files (temporary files) only when `hidden`."""
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # Beam raises when nothing matches on some filesystems
        return []
    return sorted(m.path for m in matches if hidden or not m.path.rpartition("/")[2].startswith("."))


def folder_exists(path: str) -> bool:
    """A local folder, or an object store prefix with objects under it (object stores have no folders)."""
    if is_local(path):
        return os.path.isdir(path)
    return bool(match(f"{path}/**", hidden=True))


def delete_folder(path: str) -> None:
    """`path` and everything under it, if there is anything."""
    if folder_exists(path):
        # Locally a folder is deleted whole; on object stores a path ending in "/" deletes the prefix.
        FileSystems.delete([path if is_local(path) else f"{path}/"])


def open_file(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    with open_file(path) as handle:
        return pq.read_table(io.BytesIO(handle.read()), columns=columns)


def parquet_columns(path: str) -> list[str]:
    with open_file(path) as handle:
        return pq.ParquetFile(handle).schema_arrow.names


def is_local(*paths: str) -> bool:
    return all(isinstance(FileSystems.get_filesystem(path), LocalFileSystem) for path in paths)


def link_or_copy(source_path: str, target_path: str) -> None:
    """Hard-link when both are local (dataset files are only ever replaced, never
    written in place, so sharing an inode is safe), else copy."""
    if not is_local(source_path, target_path):
        FileSystems.copy([source_path], [target_path])
        return
    os.makedirs(os.path.dirname(target_path), exist_ok=True)
    try:
        os.link(source_path, target_path)
    except OSError:  # another filesystem, or links not supported
        shutil.copyfile(source_path, target_path)
