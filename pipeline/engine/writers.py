"""Shard writers: every output format behind one interface.

`write_shard(params, output_dir, shard_number, samples, load_images, schema)`
writes one shard with the run's schema (pipeline.engine.shard_schema).  Files are
written under a hidden temporary name and renamed into place, the Parquet
before its tar, so a reader never sees a half-written shard nor a tar without
its metadata (`*.tar` / `*.parquet` globs skip the dot-files).

Layouts (img2dataset's, which training code already reads):
* `webdataset`: `shards/00000.tar` holding `<key>.jpg|png|webp`, `<key>.json`
  (metadata, embeddings left out) and `<key>.txt` (caption), and
  `shards/00000.parquet` beside it with one metadata row per sample.
* `parquet`: `shards/00000.parquet` with the metadata columns plus the image
  bytes in a binary column named after the format (`jpg`, `png`, `webp`).

Either way, embeddings a stage sends to `.npz` (`npz_arrays`: field -> array
name) leave the metadata and go to `shards/00000.npz` in DataComp's layout
(pipeline.engine.embedding_files), written before the Parquet and the tar.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.core import layout
from pipeline.core.layout import shard_name
from pipeline.engine import embedding_files, shard_schema
from pipeline.engine.tar_stream import FixedHeaderTar
from pipeline.core.records import REJECTS_SCHEMA, Reject, Sample


@dataclass(frozen=True)
class OutputParams:
    format: Literal["webdataset", "parquet"] = "webdataset"  # tar shards + Parquet metadata, or Parquet with the images inside
    samples_per_shard: int = 10000  # input rows per block; a block's kept rows make one shard
    shard_digits: int = 5  # at least; more shards than this allows widen the shard part of keys

    @property
    def _index_digits(self) -> int:
        return len(str(max(self.samples_per_shard - 1, 1)))

    def key(self, shard_id: int, index_in_shard: int) -> str:
        """`<shard><index>`, as img2dataset's keys: sorts in input order within a shard."""
        return f"{shard_id:0{self.shard_digits}d}{index_in_shard:0{self._index_digits}d}"

    def index_in_shard(self, key: str) -> int:
        return int(key[-self._index_digits:])


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


def write_json(path: str, value: Any) -> None:
    out = AtomicFile(path)
    out.handle.write(json.dumps(value, indent=2, sort_keys=False).encode("utf-8") + b"\n")
    out.commit()


def write_atomically(path: str, write: Callable[[Any], None]) -> str:
    """`write(handle)` into a temporary file, renamed to `path` once written whole."""
    out = AtomicFile(path)
    try:
        write(out.handle)
    except BaseException:
        out.abort()
        raise
    return out.commit()


def write_parquet_atomically(path: str, table: pa.Table) -> str:
    return write_atomically(path, lambda handle: pq.write_table(table, handle, compression="zstd"))


def json_columns(schema: pa.Schema) -> frozenset[str]:
    """The columns a sample's `.json` holds: all but the embeddings (those live in the Parquet, as float16,
    or in the `.npz`: then the schema has no column for them)."""
    return frozenset(f.name for f in schema if not shard_schema.is_embedding_type(f.type))


def json_metadata(metadata: dict[str, Any], columns: frozenset[str]) -> bytes:
    """A sample's `.json`: its metadata in `columns` (`json_columns` of the shard's schema)."""
    kept = {name: value for name, value in metadata.items() if name in columns}
    return json.dumps(kept, sort_keys=True, default=str).encode("utf-8")


class WebDatasetShardWriter:
    def __init__(self, output_dir: str, name: str, schema: pa.Schema):
        paths = layout.OutputLayout(output_dir)
        self._tar_file = AtomicFile(paths.shard(name, "tar"))
        # Fixed owner, mode and time: the same samples give byte-identical tars.
        self._tar = FixedHeaderTar(self._tar_file.handle, mode=0o444, mtime=0)
        self._parquet_path = paths.shard(name, "parquet")
        self._schema = schema
        self._json_columns = json_columns(schema)
        self._rows: list[dict[str, Any]] = []

    def write(self, sample: Sample) -> None:
        metadata = sample.metadata()
        members = {
            sample.image_format: sample.image,
            "txt": (sample.caption or "").encode("utf-8"),
            "json": json_metadata(metadata, self._json_columns),
        }
        for extension in sorted(members):  # img2dataset's (webdataset's TarWriter's) order: jpg, json, txt
            self._tar.add(f"{sample.key}.{extension}", members[extension])
        self._rows.append(metadata)

    def close(self) -> list[str]:
        """The Parquet appears before its tar, so a visible tar always has its metadata."""
        self._tar.close()
        try:
            parquet_path = write_parquet_atomically(self._parquet_path, shard_schema.table(self._rows, self._schema))
        except BaseException:
            self._tar_file.abort()
            raise
        return [self._tar_file.commit(), parquet_path]


class ParquetShardWriter:
    def __init__(self, output_dir: str, name: str, schema: pa.Schema):
        self._path = layout.OutputLayout(output_dir).shard(name, "parquet")
        self._schema = schema
        self._rows: list[dict[str, Any]] = []

    def write(self, sample: Sample) -> None:
        self._rows.append({**sample.metadata(), sample.image_format: sample.image})

    def close(self) -> list[str]:
        return [write_parquet_atomically(self._path, shard_schema.table(self._rows, self._schema))]


WRITERS = {"webdataset": WebDatasetShardWriter, "parquet": ParquetShardWriter}


def write_shard(
    params: OutputParams,
    output_dir: str,
    shard_number: int,
    samples: list[Sample],
    load_images: Callable[[Iterable[Sample]], Iterable[Sample]] = iter,
    schema: pa.Schema | None = None,
    npz_arrays: dict[str, str] | None = None,
) -> list[str]:
    """Write one shard's samples in key order; returns the final paths.

    `schema` is the run's (pipeline.engine.shard_schema); without one, the schema of
    these samples alone.  `load_images` gets the samples in key order and
    yields them with their image bytes, for samples shuffled without them.
    `npz_arrays` (field -> array name) sends those fields to the shard's `.npz`.
    """
    samples = sorted(samples, key=lambda s: s.key)
    schema = schema or schema_of(samples, params.format, npz_arrays)
    name = shard_name(shard_number, params.shard_digits)
    writer = WRITERS[params.format](output_dir, name, schema)
    arrays = embedding_files.ShardArrays(npz_arrays) if npz_arrays else None
    for sample in load_images(samples):
        writer.write(sample)
        if arrays is not None:
            arrays.add(sample.key, sample.fields)
    # The .npz appears first: a visible Parquet or tar always has its embeddings beside it.
    npz_paths = []
    if arrays is not None:
        npz_path = f"{output_dir}/shards/{name}.npz"
        npz_paths.append(write_atomically(npz_path, lambda handle: embedding_files.write_npz(handle, arrays.arrays())))
    return npz_paths + writer.close()


def observed_types(sample: Sample, output_format: str, npz_arrays: dict[str, str] | None = None
                   ) -> dict[str, set[pa.DataType]]:
    """What this sample's shard row needs of the run's schema (fields going to the `.npz` need nothing)."""
    observed = shard_schema.observe_sample(sample.metadata())
    for field in npz_arrays or ():
        observed.pop(field, None)
    if output_format == "parquet" and sample.image_format:
        observed[sample.image_format] = {pa.binary()}  # the image column, even while the bytes are stripped
    return observed


def schema_of(samples: Iterable[Sample], output_format: str, npz_arrays: dict[str, str] | None = None) -> pa.Schema:
    types = shard_schema.ColumnTypes()
    accumulator = types.create_accumulator()
    for sample in samples:
        accumulator = types.add_input(accumulator, observed_types(sample, output_format, npz_arrays))
    return shard_schema.decide(accumulator)


def write_rejects(params: OutputParams, output_dir: str, shard_id: int, rejects: list[Reject]) -> str:
    rows = [r.row() for r in sorted(rejects, key=lambda r: r.key)]
    path = layout.OutputLayout(output_dir).rejects_file(shard_name(shard_id, params.shard_digits))
    return write_parquet_atomically(path, pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA))
