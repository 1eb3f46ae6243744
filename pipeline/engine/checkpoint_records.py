"""Download results as plain Arrow rows: how `pipeline.engine.checkpoint` stores them, without pickle.

One row per result.  `kind` says whether it is a `Sample` (downloaded) or a
`Reject` (the download failed); the columns hold the dataclass fields, with
`fields` and `extra` (scores and input columns: JSON values) as JSON text.
Reading back builds the dataclasses from these values only, so a forged file
can at worst give wrong values, which a damaged file could too: any row that
does not fit raises `MalformedCheckpoint`.
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from pipeline.core.records import REJECTS_SCHEMA, Reject, Sample

SAMPLE, REJECT = "sample", "reject"
_INT_FIELDS = ("width", "height", "original_width", "original_height")
# A reject's columns (fields and extra as JSON text), then what a downloaded sample adds.
RECORD_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        *REJECTS_SCHEMA,
        ("image", pa.binary()),
        ("image_format", pa.string()),
        *[(name, pa.int64()) for name in _INT_FIELDS],
        ("sha256", pa.string()),
        ("image_ref", pa.list_(pa.int64())),
    ]
)


# What the shard writer reads back: which rows hold an image, and the image.
IMAGE_COLUMNS = pa.schema([RECORD_SCHEMA.field(name) for name in ("kind", "key", "image")])


class MalformedCheckpoint(ValueError):
    """A checkpoint file whose columns or values are not what `to_row` writes."""


def to_row(record: Sample | Reject) -> dict[str, Any]:
    row = {
        "key": record.key, "shard_id": record.shard_id, "url": record.url, "caption": record.caption,
        "fields": _to_json(record.fields), "extra": _to_json(record.extra),
    }
    if isinstance(record, Reject):
        return {**row, "kind": REJECT, "stage": record.stage, "reason": record.reason}
    image_fields = ("image", "image_format", *_INT_FIELDS, "sha256")
    row.update({name: getattr(record, name) for name in image_fields})
    row["image_ref"] = list(record.image_ref) if record.image_ref is not None else None
    return {**row, "kind": SAMPLE}


def _to_json(value: dict[str, Any]) -> str:
    # Stage scores may be numpy scalars or arrays; everything else is JSON already.  Key order is kept:
    # it is the order of the shard metadata's columns.
    return json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else _refuse(v))


def _refuse(value: Any):
    raise TypeError(f"a checkpointed field holds a {type(value).__name__}, which is not a JSON value")


def from_rows(table: pa.Table) -> dict[str, Sample | Reject]:
    """The records of a checkpoint table, by key; MalformedCheckpoint if it is not one `to_row` wrote."""
    if not table.schema.equals(RECORD_SCHEMA):
        raise MalformedCheckpoint(f"unexpected columns {table.schema.names}")
    records = {}
    for row in table.to_pylist():
        record = _from_row(row)
        records[record.key] = record
    return records


def images_by_key(table: pa.Table) -> dict[str, bytes]:
    """{key: image bytes} of the downloaded rows of a table of IMAGE_COLUMNS, without building records."""
    if not table.schema.equals(IMAGE_COLUMNS):
        raise MalformedCheckpoint(f"unexpected image columns {table.schema}")
    downloaded = table.filter(pa.compute.equal(table["kind"], SAMPLE))
    return {key: image for key, image in zip(downloaded["key"].to_pylist(), downloaded["image"].to_pylist())
            if key is not None and image is not None}


def _from_row(row: dict[str, Any]) -> Sample | Reject:
    try:
        common = {
            "key": _required(row, "key", str), "shard_id": _required(row, "shard_id", int), "url": row["url"] or "",
            "caption": row["caption"], "fields": _json_object(row["fields"]), "extra": _json_object(row["extra"]),
        }
        if row["kind"] == REJECT:
            return Reject(**common, stage=_required(row, "stage", str), reason=_required(row, "reason", str))
        if row["kind"] != SAMPLE:
            raise MalformedCheckpoint(f"unknown record kind {row['kind']!r}")
        return Sample(**common, **{name: row[name] for name in ("image", "image_format", *_INT_FIELDS, "sha256")},
                      image_ref=_image_ref(row["image_ref"]))
    except json.JSONDecodeError as err:
        raise MalformedCheckpoint(f"row {row.get('key')!r}: {err}") from None


def _required(row: dict[str, Any], name: str, kind: type) -> Any:
    if not isinstance(row[name], kind):
        raise MalformedCheckpoint(f"row {row.get('key')!r}: no {name}")
    return row[name]


def _json_object(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text is not None else {}
    if not isinstance(value, dict):
        raise MalformedCheckpoint("fields/extra are not JSON objects")
    return value


def _image_ref(value: list[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if len(value) != 2:
        raise MalformedCheckpoint(f"image_ref {value!r} is not (shard, task)")
    return tuple(value)
