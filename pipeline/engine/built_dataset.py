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

It is also the one reader of a dataset's rows and images, for the report as
for the takedown: `kept_batches` and `reject_batches` stream the shards'
metadata and the rejects in batches of rows, `kept_images` / `shard_images`
the stored images (from the tars, or from a Parquet shard's image column).
The batch readers do not check the dataset first (a report describes even an
unfinished or damaged output): a file that cannot be read is named in the
caller's `problems` list and skipped.  Paths (`pipeline.core.layout`) may be
local or on any Beam filesystem.
"""
from __future__ import annotations

import collections
import io
import itertools
import json
import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from pipeline.core import layout
from pipeline.core.layout import IMAGE_EXTENSIONS, OutputLayout
from pipeline.engine import audit, embedding_files

_MAX_PROBLEMS_SHOWN = 10
BATCH_ROWS = 8192  # metadata rows per batch: bounded memory whatever the shard size
IMAGE_BATCH_ROWS = 256  # rows per batch when they carry image bytes


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
        problems.append(f"{_tar(sorted(tars)[0])}: tar files in a dataset of format parquet")
    if fmt == "webdataset":
        problems += [f"{_tar(name)} has no {_parquet(name)}" for name in sorted(set(tars) - set(parquets))]
        problems += [f"{_parquet(name)} has no {_tar(name)}" for name in sorted(set(parquets) - set(tars))]
    problems += [f"{_npz(name)} has no {_parquet(name)}" for name in sorted(set(npzs) - set(parquets))]
    shards = []
    for name in sorted(set(parquets) & set(tars) if fmt == "webdataset" else parquets):
        shard, shard_problems = _check_shard(folder, name, fmt, name in npzs)
        shards.append(shard)
        problems += shard_problems
    result = None
    try:
        result = audit.read_audit(folder)
    except (OSError, ValueError) as err:
        problems.append(f"{layout.AUDIT} cannot be read ({type(err).__name__}: {err}): the accounting cannot be kept")
    if result is not None:
        problems += _audit_problems(folder, result, sum(shard.rows for shard in shards))
    if problems:
        shown = problems[:_MAX_PROBLEMS_SHOWN] + [f"... {len(problems) - _MAX_PROBLEMS_SHOWN} more"] * (
            len(problems) > _MAX_PROBLEMS_SHOWN)
        raise DatasetError(f"{folder} was not changed: " + "; ".join(shown))
    return Dataset(folder, fmt, shards, result)


def _tar(name: str) -> str:
    return layout.shard_file(name, "tar")


def _parquet(name: str) -> str:
    return layout.shard_file(name, "parquet")


def _npz(name: str) -> str:
    return layout.shard_file(name, "npz")


def _unfinished_work(folder: str) -> list[str]:
    problems = []
    paths = OutputLayout(folder)
    if folder_exists(paths.staging):
        problems.append(f"{layout.STAGING}: an interrupted takedown; run `curate takedown --in-place` on it again to finish it")
    if not FileSystems.exists(paths.success):
        problems.append(f"no {layout.SUCCESS}: the run that wrote it did not finish")
    for sub in ("", f"{layout.SHARDS}/", f"{layout.REJECTS}/", f"{layout.REPORT}/"):
        problems += [f"{path[len(folder) + 1:]}: a half-written temporary file (of a run that was killed?)"
                     for path in match(f"{folder}/{sub}.*.tmp", hidden=True)]
    return problems


def _format(folder: str, tars: dict[str, str]) -> str:
    """The recipe's output format; a dataset without recipe.json is WebDataset if it has tars."""
    try:
        with open_file(OutputLayout(folder).recipe) as handle:
            return json.loads(handle.read())["output"]["format"]
    except (OSError, ValueError, KeyError, TypeError):
        return "webdataset" if tars else "parquet"


def _check_shard(folder: str, name: str, fmt: str, has_npz: bool) -> tuple[Shard, list[str]]:
    paths = OutputLayout(folder)
    metadata_path = paths.shard(name, "parquet")
    tar_path = paths.shard(name, "tar") if fmt == "webdataset" else None
    npz_path = paths.shard(name, "npz") if has_npz else None
    try:
        keys = read_parquet(metadata_path, columns=["key"]).column("key").to_pylist()
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        return Shard(name, metadata_path, tar_path, 0, npz_path), [f"{_parquet(name)} cannot be read: {err}"]
    shard = Shard(name, metadata_path, tar_path, len(keys), npz_path)
    problems = _npz_problems(npz_path, name, keys) if npz_path else []
    if tar_path is None:
        return shard, problems
    try:
        samples = tar_samples(tar_path)
    except (OSError, tarfile.TarError) as err:
        return shard, problems + [f"{_tar(name)} cannot be read: {err}"]
    missing, extra = sorted(set(keys) - set(samples)), sorted(set(samples) - set(keys))
    no_image = sorted(key for key, extensions in samples.items() if not set(extensions) & set(IMAGE_EXTENSIONS))
    twice = sorted(key for key, extensions in samples.items() if len(extensions) != len(set(extensions)))
    if missing or extra or no_image or twice or len(keys) != len(set(keys)):
        problems.append(f"{_tar(name)} holds {len(samples)} samples ({len(no_image)} without an image, "
                        f"{len(twice)} with a member twice) "
                        f"but {_parquet(name)} has {len(keys)} rows (first missing from the tar: "
                        f"{missing[:3]}, first not in the parquet: {extra[:3]})")
    return shard, problems


def _npz_problems(path: str, name: str, keys: list[str]) -> list[str]:
    try:
        return embedding_files.problems(name, read_npz(path), keys)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # numpy: ValueError for a damaged member
        return [f"{_npz(name)} cannot be read: {err}"]


def read_npz(path: str) -> dict:
    with open_file(path) as handle:
        return embedding_files.read_npz(handle.read())


def tar_samples(path: str) -> dict[str, list[str]]:
    """key -> the extensions of its members, read from the tar headers only."""
    samples: dict[str, list[str]] = collections.defaultdict(list)
    with open_file(path) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        for member in tar:
            key, extension = member_key(member.name)
            samples[key].append(extension)
    return samples


def member_key(name: str) -> tuple[str, str]:
    """A tar member's (sample key, extension): "00000001.jpg" -> ("00000001", "jpg")."""
    key, _, extension = name.rpartition("/")[2].partition(".")
    return key, extension


def _audit_problems(folder: str, result: dict[str, Any], shard_rows: int) -> list[str]:
    try:
        audit.check_accounting(result)
        counts = result["counts"]
        kept, by_stage = counts["kept"], counts["rejected_by_stage"]
    except (audit.AccountingError, KeyError, TypeError) as err:
        return [f"{layout.AUDIT} does not add up: {err}"]
    problems = []
    if kept != shard_rows:
        problems.append(f"{layout.AUDIT} counts {kept} kept rows but the shards hold {shard_rows}")
    try:
        on_file = count_rejects(folder)
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        return problems + [f"{layout.REJECTS}/ cannot be read: {err}"]
    counted = {(stage, reason): n for stage, reasons in by_stage.items() for reason, n in reasons.items() if n}
    if counted != on_file:
        differ = sorted(set(counted.items()) ^ set(on_file.items()))[:3]
        problems.append(f"{layout.AUDIT} rejected counts differ from the rows in {layout.REJECTS}/ (e.g. {differ}, audit vs files)")
    return problems


def count_rejects(folder: str) -> dict[tuple[str, str], int]:
    """(stage, reason) -> rows in rejects/*.parquet."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for path in match(OutputLayout(folder).rejects_glob):
        table = read_parquet(path, columns=["stage", "reason"])
        counts.update(zip(table.column("stage").to_pylist(), table.column("reason").to_pylist()))
    return dict(counts)


# ------------------------------------------------------------ rows and images


@dataclass(frozen=True)
class StoredImage:
    """A kept sample's image as stored in its shard."""

    key: str
    caption: str | None
    image: bytes


def scalar_columns(schema: pa.Schema) -> list[str]:
    """Columns worth reading for statistics: not image bytes, not embeddings or other nested values."""
    return [f.name for f in schema if not pa.types.is_nested(f.type)
            and not pa.types.is_binary(f.type) and not pa.types.is_large_binary(f.type)]


Columns = Callable[[pa.Schema], list[str]]


def kept_batches(folder: str, problems: list[str], columns: Columns | None = None) -> Iterator[list[dict[str, Any]]]:
    """The kept rows (shards' metadata), in batches, shard by shard in name order; `columns` picks from each
    file's schema (all columns if None)."""
    for path in match(OutputLayout(folder).shards_glob("parquet")):
        yield from parquet_batches(path, problems, columns)


def reject_batches(folder: str, problems: list[str], columns: Columns | None = None) -> Iterator[list[dict[str, Any]]]:
    """The rejects rows, in batches, file by file in name order (`fields` and `extra` as JSON text)."""
    for path in match(OutputLayout(folder).rejects_glob):
        yield from parquet_batches(path, problems, columns)


def parquet_batches(path: str, problems: list[str] | None = None, columns: Columns | None = None,
                    batch_rows: int = BATCH_ROWS) -> Iterator[list[dict[str, Any]]]:
    """Batches of row dicts from one Parquet file; a file that cannot be read is noted in `problems`
    and skipped (raised if `problems` is None)."""
    try:
        with open_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            selected = columns(parquet.schema_arrow) if columns else None
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=selected):
                yield batch.to_pylist()
    except (OSError, pa.ArrowException) as err:
        if problems is None:
            raise
        problems.append(f"{path}: unreadable, skipped ({err})")


def kept_images(folder: str, problems: list[str]) -> Iterator[StoredImage]:
    """The kept samples' images in shard order, read lazily (take the first N and stop): from the tars
    of a WebDataset, else from the Parquet shards' image columns; an unreadable file is noted in `problems`."""
    paths = OutputLayout(folder)
    tars = match(paths.shards_glob("tar"))
    if not tars:
        for path in match(paths.shards_glob("parquet")):
            yield from parquet_images(path, problems=problems)
    for path in tars:
        try:
            yield from tar_images(path)
        except (OSError, tarfile.TarError) as err:
            problems.append(f"{path}: unreadable, skipped ({err})")


def shard_images(shard: Shard, keys: set[str] | None = None) -> Iterator[StoredImage]:
    """The images of one shard's samples (only of `keys`, if given), streamed."""
    if shard.tar_path is not None:
        return tar_images(shard.tar_path, keys)
    return parquet_images(shard.metadata_path, keys)


def tar_images(path: str, keys: set[str] | None = None) -> Iterator[StoredImage]:
    """The samples of a WebDataset tar that have an image, read as a stream (a sample's members are
    consecutive: <key>.jpg, <key>.json, <key>.txt, the caption)."""
    with open_file(path) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
        members = ((member, *member_key(member.name)) for member in tar)
        for key, group in itertools.groupby(members, key=lambda named: named[1]):
            if keys is not None and key not in keys:
                continue
            image = caption = None
            for member, _key, extension in group:
                if extension == "txt":
                    caption = tar.extractfile(member).read().decode("utf-8", "replace")
                elif extension in IMAGE_EXTENSIONS and image is None:
                    image = tar.extractfile(member).read()
            if image:
                yield StoredImage(key, caption, image)


def parquet_images(path: str, keys: set[str] | None = None, problems: list[str] | None = None) -> Iterator[StoredImage]:
    """The rows of a Parquet shard with bytes in an image column (`jpg`, `png` or `webp`)."""
    def image_columns(schema: pa.Schema) -> list[str]:
        return [name for name in ("key", "caption", *IMAGE_EXTENSIONS) if name in schema.names]

    for batch in parquet_batches(path, problems, image_columns, IMAGE_BATCH_ROWS):
        for row in batch:
            image = next((row[name] for name in IMAGE_EXTENSIONS if row.get(name)), None)
            key = str(row.get("key"))
            if image and (keys is None or key in keys):
                yield StoredImage(key, row.get("caption"), image)


def metadata_rows(shard: Shard) -> list[dict[str, Any]]:
    """Every metadata row of a shard, without the image columns."""
    columns = [name for name in parquet_columns(shard.metadata_path) if name not in IMAGE_EXTENSIONS]
    return read_parquet(shard.metadata_path, columns=columns).to_pylist()


# ------------------------------------------------------------ files


def _names(folder: str, extension: str) -> dict[str, str]:
    return {path.rpartition("/")[2].removesuffix(f".{extension}"): path
            for path in match(OutputLayout(folder).shards_glob(extension))}


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
