"""Records that flow through the pipeline and the Arrow schemas they are written with.

A `Sample` is one input row on its way through the stages; a `Reject` is the
same row once a stage has dropped it, with the stage and the reason.  Every
input row becomes exactly one of the two (the accounting invariant).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa


class Verdict(NamedTuple):
    """A stage's decision about one sample."""

    keep: bool
    reason: str | None = None


KEEP = Verdict(True)
# The tagged output every step that rejects samples sends its Rejects to (Beam).
REJECTED = "rejected"


def drop(reason: str) -> Verdict:
    return Verdict(False, reason)


class _CompactPickle:
    """Pickles a dataclass as its class and field values, without the field names.

    Every shuffle in a Beam pipeline encodes records with pickle; the names
    would be a third of a sample's bytes there (and in the local runner's memory).
    """

    def __reduce__(self):
        return type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self))


@dataclass
class Sample(_CompactPickle):
    """One image-text pair.

    `key` is stable for a given input (derived from the row's position), so a
    re-run yields the same keys and shards.  `shard_id` is the input block of
    the row, k for input rows [k*N, (k+1)*N), as img2dataset's shard ids are;
    the shard file it lands in is the block's rank among the blocks that kept
    rows (pipeline.engine.write_outputs).
    """

    key: str
    shard_id: int
    url: str
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # carried-through input columns
    image: bytes | None = None  # encoded output image
    image_format: str | None = None  # file extension: jpg, png, webp
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    sha256: str | None = None  # of the original downloaded bytes
    fields: dict[str, Any] = field(default_factory=dict)  # scores and fields added by stages
    # The download task whose checkpoint holds this sample's image bytes, while
    # `image` is still the image saved there: shuffles then carry the sample
    # without its bytes (pipeline.engine.stored_images.ImageStore).  A stage that
    # changes the image calls `replace_image`, which forgets it, so the edited
    # image (face_blur) travels with the sample.
    image_ref: tuple[int, int] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # Assigning `image` would leave `image_ref` naming the old bytes, and the
        # shuffle would silently bring the unedited image back: refused.
        if name == "image" and self.__dict__.get("image_ref") is not None:
            raise AttributeError(f"sample {self.key}: its image is a stored one; change it with "
                                 "sample.replace_image(data)")
        object.__setattr__(self, name, value)

    def replace_image(self, data: bytes) -> None:
        """A new image (e.g. blurred): the stored one no longer applies, so the bytes travel with the sample."""
        object.__setattr__(self, "image_ref", None)
        object.__setattr__(self, "image", data)

    def restore_image(self, data: bytes) -> None:
        """Puts the stored image bytes back without forgetting where they came from."""
        object.__setattr__(self, "image", data)

    def metadata(self) -> dict[str, Any]:
        """Everything but the image bytes, flattened: what goes into .json and .parquet."""
        meta = {name: getattr(self, name) for name in METADATA_COLUMNS}
        meta.update(status="success", error_message=None)  # img2dataset's columns: a kept row succeeded
        meta.update(self.fields)
        for name, value in self.extra.items():
            meta.setdefault(name, value)
        return meta

    def reject(self, stage: str, reason: str) -> "Reject":
        return Reject(
            key=self.key,
            shard_id=self.shard_id,
            url=self.url,
            caption=self.caption,
            stage=stage,
            reason=reason,
            fields={**_known_image_fields(self), **self.fields},
            extra=self.extra,
        )


def _known_image_fields(sample: Sample) -> dict[str, Any]:
    names = ("width", "height", "original_width", "original_height", "sha256")
    return {n: getattr(sample, n) for n in names if getattr(sample, n) is not None}


METADATA_COLUMNS = (
    "key",
    "shard_id",
    "url",
    "caption",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
)


@dataclass
class Reject(_CompactPickle):
    """An input row that a stage dropped, and why."""

    key: str
    shard_id: int
    url: str
    caption: str | None
    stage: str
    reason: str
    fields: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "shard_id": self.shard_id,
            "url": self.url,
            "caption": self.caption,
            "stage": self.stage,
            "reason": self.reason,
            # Scores differ by stage, so they travel as one JSON column.
            "fields": json.dumps(self.fields, sort_keys=True, default=str),
            "extra": json.dumps(self.extra, sort_keys=True, default=str),
        }


REJECTS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard_id", pa.int64()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("fields", pa.string()),
        ("extra", pa.string()),
    ]
)
