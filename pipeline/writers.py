"""Shard writers: every output format behind one interface.

`open_shard_writer(params, output_dir, shard_id)` returns a writer with
`write(sample)` and `close()`.  Files are written under a hidden temporary name
and renamed into place by `close()`, so a reader never sees a half-written
shard (`*.tar` / `*.parquet` globs skip the dot-files).

Layouts (img2dataset's, which training code already reads):
* `webdataset`: `shards/00000.tar` holding `<key>.jpg|png|webp`, `<key>.txt`
  (caption) and `<key>.json` (metadata), and `shards/00000.parquet` beside it
  with one metadata row per sample.
* `parquet`: `shards/00000.parquet` with the metadata columns plus the image
  bytes in a binary column named after the format (`jpg`, `png`, `webp`).
"""
from __future__ import annotations

import io
import json
import tarfile
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.schema import REJECTS_SCHEMA, Reject, Sample


@dataclass(frozen=True)
class OutputParams:
    format: Literal["webdataset", "parquet"] = "webdataset"  # tar shards + Parquet metadata, or Parquet with the images inside
    samples_per_shard: int = 10000  # input rows per shard; a shard holds the kept ones
    shard_digits: int = 5  # at least; more shards than this allows widen the shard part of keys

    @property
    def _index_digits(self) -> int:
        return len(str(max(self.samples_per_shard - 1, 1)))

    def key(self, shard_id: int, index_in_shard: int) -> str:
        """`<shard><index>`, as img2dataset's keys: sorts in input order within a shard."""
        return f"{shard_id:0{self.shard_digits}d}{index_in_shard:0{self._index_digits}d}"

    def index_in_shard(self, key: str) -> int:
        return int(key[-self._index_digits:])


def shard_name(shard_id: int, digits: int) -> str:
    return f"{shard_id:0{digits}d}"


class AtomicFile:
    """A file written under a temporary name and renamed to `path` on commit."""

    def __init__(self, path: str):
        directory, _, base = path.rpartition("/")
        self.path = path
        self.temp_path = f"{directory}/.{base}.{uuid.uuid4().hex}.tmp"
        self.handle = FileSystems.create(self.temp_path)

    def commit(self) -> str:
        self.handle.close()
        if FileSystems.exists(self.path):
            # A retried bundle rewrites the same shard: replace it.
            FileSystems.delete([self.path])
        FileSystems.rename([self.temp_path], [self.path])
        return self.path

    def abort(self) -> None:
        self.handle.close()
        FileSystems.delete([self.temp_path])


def write_parquet_atomically(path: str, table: pa.Table) -> str:
    out = AtomicFile(path)
    try:
        pq.write_table(table, out.handle, compression="zstd")
    except BaseException:
        out.abort()
        raise
    return out.commit()


def metadata_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows with differing score columns become one table (missing values null)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return pa.Table.from_pylist([{name: row.get(name) for name in columns} for row in rows])


class WebDatasetShardWriter:
    def __init__(self, output_dir: str, name: str):
        self._tar_file = AtomicFile(f"{output_dir}/shards/{name}.tar")
        self._tar = tarfile.open(fileobj=self._tar_file.handle, mode="w|", format=tarfile.USTAR_FORMAT)
        self._parquet_path = f"{output_dir}/shards/{name}.parquet"
        self._rows: list[dict[str, Any]] = []

    def write(self, sample: Sample) -> None:
        metadata = sample.metadata()
        self._add(f"{sample.key}.{sample.image_format}", sample.image)
        self._add(f"{sample.key}.txt", (sample.caption or "").encode("utf-8"))
        self._add(f"{sample.key}.json", json.dumps(metadata, sort_keys=True, default=str).encode("utf-8"))
        self._rows.append(metadata)

    def _add(self, name: str, data: bytes) -> None:
        # Fixed owner, mode and time: the same samples give byte-identical tars.
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> list[str]:
        self._tar.close()
        tar_path = self._tar_file.commit()
        return [tar_path, write_parquet_atomically(self._parquet_path, metadata_table(self._rows))]


class ParquetShardWriter:
    def __init__(self, output_dir: str, name: str):
        self._path = f"{output_dir}/shards/{name}.parquet"
        self._rows: list[dict[str, Any]] = []

    def write(self, sample: Sample) -> None:
        self._rows.append({**sample.metadata(), sample.image_format: sample.image})

    def close(self) -> list[str]:
        return [write_parquet_atomically(self._path, metadata_table(self._rows))]


WRITERS = {"webdataset": WebDatasetShardWriter, "parquet": ParquetShardWriter}


def write_shard(
    params: OutputParams,
    output_dir: str,
    shard_id: int,
    samples: list[Sample],
    load_images: Callable[[Iterable[Sample]], Iterable[Sample]] = iter,
) -> list[str]:
    """Write one shard's samples in key order; returns the final paths.

    `load_images` gets the samples in key order and yields them with their
    image bytes, for samples shuffled without them.
    """
    writer = WRITERS[params.format](output_dir, shard_name(shard_id, params.shard_digits))
    for sample in load_images(sorted(samples, key=lambda s: s.key)):
        writer.write(sample)
    return writer.close()


def write_rejects(params: OutputParams, output_dir: str, shard_id: int, rejects: list[Reject]) -> str:
    rows = [r.row() for r in sorted(rejects, key=lambda r: r.key)]
    path = f"{output_dir}/rejects/{shard_name(shard_id, params.shard_digits)}.parquet"
    return write_parquet_atomically(path, pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA))
