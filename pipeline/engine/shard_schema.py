"""One Arrow schema for every shard of a run, decided before any shard is written.

Carried-through input columns and stage fields are typed by what the whole run
holds, not by what one shard happens to hold: every sample reports the Arrow
type of each of its values (`observe`), a global combine merges them
(`ColumnTypes`), and `decide` turns the merged observations into the schema
the writers take as a side input.  So a column that is all null in one shard
still has the run's type there, and `pyarrow.dataset` reads the shards as one
table.

Merging: null takes the other type; numbers widen (int -> float) and structs
gain fields as `pyarrow.unify_schemas(promote_options="permissive")` allows;
anything else that does not merge (an int in one file and a string in
another, an empty `{}`, a type Parquet cannot store) becomes a string column
holding the value as JSON (strings stay as they are).  A value that still does
not fit its column becomes a reject of stage `write` (`conform`) rather than a
failed run.

Embeddings (`*_embedding` fields holding lists of numbers) are stored as
`list<float16>` (half the bytes of float32, a quarter of the JSON doubles they
were), and kept out of the per-sample `.json`.
"""
from __future__ import annotations

import functools
import io
import json
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EMBEDDING_SUFFIX = "_embedding"
# Not a fixed-size list: pyarrow 25 cannot read back a null entry of a fixed-size list from Parquet
# ("Expected all lists to be of size=512 but index 2 had size=0"), and an embedding may be missing.
EMBEDDING_TYPE = pa.list_(pa.float16())
MAX_TYPES_PER_COLUMN = 16  # more distinct types than this: the column is JSON text anyway

# img2dataset's columns and types (sizes are int32), then ours.
FIXED_FIELDS = {
    "url": pa.string(),
    "caption": pa.string(),
    "key": pa.string(),
    "status": pa.string(),
    "error_message": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
    "original_width": pa.int32(),
    "original_height": pa.int32(),
    "sha256": pa.string(),
    "shard_id": pa.int64(),
}
IMAGE_COLUMNS = ("jpg", "png", "webp")  # the image bytes in output.format: parquet
_INT64_RANGE = (-(2**63), 2**63 - 1)
_SCALAR_TYPES = {bool: pa.bool_(), float: pa.float64(), str: pa.string(), bytes: pa.binary()}


def is_embedding(name: str, value: Any) -> bool:
    return name.endswith(EMBEDDING_SUFFIX) and isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0


def observe(name: str, value: Any) -> pa.DataType:
    """The Arrow type one value asks for."""
    if value is None:
        return pa.null()
    if is_embedding(name, value):
        return EMBEDDING_TYPE
    if type(value) is int:
        return pa.int64() if _INT64_RANGE[0] <= value <= _INT64_RANGE[1] else pa.string()
    if type(value) in _SCALAR_TYPES:
        return _SCALAR_TYPES[type(value)]
    try:
        return pa.array([value]).type
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return pa.string()


def observe_sample(metadata: dict[str, Any]) -> dict[str, set[pa.DataType]]:
    return {name: {observe(name, value)} for name, value in metadata.items() if name not in FIXED_FIELDS}


class ColumnTypes(beam.CombineFn):
    """{column: set of observed types} over the whole run."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, observed):
        for name, types in observed.items():
            seen = accumulator.setdefault(name, set())
            if len(seen) <= MAX_TYPES_PER_COLUMN:
                seen |= types
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator):
        return accumulator


def decide(observed: dict[str, set[pa.DataType]]) -> pa.Schema:
    """The run's schema in img2dataset's order: url, caption, the other input columns and stage
    fields (by name), key, status, ..., then ours, and the image bytes (parquet format) last."""
    merged = {name: _merge(name, types) for name, types in sorted(observed.items())}
    images = [name for name in IMAGE_COLUMNS if merged.get(name) == pa.binary()]
    fields = [pa.field(name, FIXED_FIELDS[name]) for name in ("url", "caption")]
    fields += [pa.field(name, kind) for name, kind in merged.items() if name not in images]
    fields += [pa.field(name, kind) for name, kind in FIXED_FIELDS.items() if name not in ("url", "caption")]
    return pa.schema(fields + [pa.field(name, pa.binary()) for name in images])


def _merge(name: str, types: set[pa.DataType]) -> pa.DataType:
    known = sorted({t for t in types if t != pa.null()}, key=str)
    if not known:
        return pa.string()
    if len(known) > MAX_TYPES_PER_COLUMN:
        return pa.string()
    try:
        merged = pa.unify_schemas([pa.schema([(name, t)]) for t in known], promote_options="permissive")
    except (pa.ArrowException, TypeError):
        return pa.string()
    kind = merged.field(name).type
    return kind if _parquet_can_store(kind) else pa.string()


@functools.lru_cache(maxsize=256)
def _parquet_can_store(kind: pa.DataType) -> bool:
    try:
        pq.write_table(pa.table({"c": pa.array([None], type=kind)}), io.BytesIO())
    except (pa.ArrowException, TypeError, ValueError):
        return False
    return True


def is_embedding_type(kind: pa.DataType) -> bool:
    return kind == EMBEDDING_TYPE


def stored_value(value: Any, kind: pa.DataType) -> Any:
    """The value as its column holds it: JSON text in a string column, a float16 array for embeddings."""
    if value is None:
        return None
    if pa.types.is_string(kind) and not isinstance(value, str):
        return json.dumps(value, sort_keys=True, default=str)
    if is_embedding_type(kind):
        return np.asarray(value, dtype=np.float16)
    return value


def column_array(values: Iterable[Any], kind: pa.DataType) -> pa.Array:
    values = [stored_value(v, kind) for v in values]
    if not is_embedding_type(kind):
        return pa.array(values, type=kind)
    # pyarrow converts numpy float16, not Python floats, to halffloat: build the lists from one flat array.
    parts = [np.zeros(0, np.float16) if v is None else v for v in values]
    flat = pa.array(np.concatenate(parts) if parts else np.zeros(0, np.float16), type=pa.float16())
    mask = pa.array([v is None for v in values], type=pa.bool_())
    offsets = pa.array(np.cumsum([0] + [len(p) for p in parts]), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, flat, mask=mask)


def table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_arrays([column_array((r.get(f.name) for r in rows), f.type) for f in schema], schema=schema)


def misfit(metadata: dict[str, Any], schema: pa.Schema) -> str | None:
    """The first column whose value this schema cannot hold, if any."""
    types = _column_types(schema)
    for name, value in metadata.items():
        kind = types.get(name)
        if kind is not None and not _fits(name, value, kind):
            return name
    return None


@functools.lru_cache(maxsize=16)
def _column_types(schema: pa.Schema) -> dict[str, pa.DataType]:
    # Once per run's schema: `schema.names` builds a new list on every call (3 us), 40 us of a sample's 53.
    return {field.name: field.type for field in schema}


def _fits(name: str, value: Any, kind: pa.DataType) -> bool:
    if value is None or pa.types.is_string(kind) or observe(name, value) == kind:
        return True  # a string column takes anything (as JSON)
    if pa.types.is_int32(kind) and type(value) is int:
        return -(2**31) <= value < 2**31
    try:
        column_array([value], kind)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return False
    return True
