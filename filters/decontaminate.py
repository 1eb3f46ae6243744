"""Remove images that (nearly) appear in an evaluation set.

A `SampleStage`, not a shuffle: the evaluation set is small next to the
dataset (thousands to ~1e5 images), so every worker loads its hashes once in
`setup()` and compares each sample against all of them (vectorised: ~1 ms per
sample for 100k eval images).  The comparison is dedup_image's test
(`pipeline.dedup.image_signatures.near_matrix`): pHash within `max_distance`
bits, and for low-detail images (few pHash bits set) the 2x2 colour grid must
agree as well.  A match is rejected with reason
`eval_overlap`; `fields["eval_match"]` names the eval image (file path
relative to the folder, or the Parquet `name` column, else its row number)
and `fields["eval_distance"]` the Hamming distance.  Counts land in the
audit's `rejected_by_stage`.

`eval_set` is either
* a folder of images: every readable image under it is hashed in `setup()`,
  after the same resize the pipeline applies (`image_size`, `resize_mode`:
  set them to the recipe's `resize:` values, since `border` padding changes
  the hash).  Each worker hashes the folder once; for large sets index it
  once instead:  python -m filters.decontaminate FOLDER OUT.parquet
* a Parquet file with a `phash` column (16 hex digits), optional
  `colour_grid` (24 hex digits; without it low-detail images match on the
  hash alone) and optional `name`.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.stage import Filter, StageContext
from pipeline.dedup.groups import check_range
from pipeline.dedup.image_signatures import (
    GRID_BYTES,
    SignatureArrays,
    UnreadableImage,
    near_matrix,
    sample_signature,
    signature_of_bytes,
)
from pipeline.media.imaging import ImageRejected, ResizeParams, process_image
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import KEEP, Sample, Verdict, drop

log = logging.getLogger("curate")


@dataclass(frozen=True)
class EvalSet:
    names: list[str]
    signatures: SignatureArrays

    def nearest(self, sample: SignatureArrays, max_distance: int) -> tuple[str, int] | None:
        """(name, distance) of the closest matching eval image, ties to the first; None if none match."""
        near = near_matrix(sample, self.signatures, max_distance)[0]
        if not near.any():
            return None
        distances = np.bitwise_count(self.signatures.phash ^ sample.phash[0]).astype(np.int64)
        distances[~near] = np.iinfo(np.int64).max
        best = int(np.argmin(distances))
        return self.names[best], int(distances[best])


def hash_folder(folder: str, resize: ResizeParams) -> tuple[list[str], list[tuple[int, int, bytes]]]:
    """(relative paths, signature payloads) of the readable images under `folder`, in path order."""
    names, payloads, unreadable = [], [], 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            image = process_image(path.read_bytes(), resize)
            signature = signature_of_bytes(image.data, "none")
        except (ImageRejected, UnreadableImage, OSError):
            unreadable += 1
            continue
        names.append(path.relative_to(folder).as_posix())
        payloads.append(signature.payload())
    if unreadable:
        log.warning("decontaminate: skipped %d unreadable file(s) in %s", unreadable, folder)
    return names, payloads


def write_index(names: list[str], payloads: list[tuple[int, int, bytes]], path: str) -> None:
    table = pa.table({
        "name": names,
        "phash": [f"{p[0]:016x}" for p in payloads],
        "colour_grid": [p[2].hex() for p in payloads],
    })
    pq.write_table(table, path)


def read_index(path: str) -> EvalSet:
    table = pq.read_table(path)
    if "phash" not in table.column_names:
        raise ValueError(f"{path}: an eval-set Parquet needs a 'phash' column (16 hex digits)")
    hashes = table.column("phash").to_pylist()
    names = table.column("name").to_pylist() if "name" in table.column_names else [str(i) for i in range(len(hashes))]
    phash = np.array([int(h, 16) if isinstance(h, str) else int(h) for h in hashes], dtype=np.uint64)
    grid = None
    if "colour_grid" in table.column_names:
        raw = b"".join(bytes.fromhex(g) for g in table.column("colour_grid").to_pylist())
        grid = np.frombuffer(raw, dtype=np.uint8).reshape(len(hashes), GRID_BYTES).astype(np.int16)
    return EvalSet([str(n) for n in names], SignatureArrays(phash, np.zeros_like(phash), grid))


@functools.cache
def load_eval_set(path: str, image_size: int, resize_mode: str) -> EvalSet:
    """Cached per process: stages sharing a worker process hash the folder once."""
    if os.path.isdir(path):
        names, payloads = hash_folder(path, ResizeParams(image_size=image_size, resize_mode=resize_mode))
        if not payloads:
            raise ValueError(f"{path}: no readable image in the eval-set folder")
        return EvalSet(names, SignatureArrays.of(payloads))
    return read_index(path)


@register
class Decontaminate(Filter):
    name = "decontaminate"

    @dataclass(frozen=True)
    class Params:
        eval_set: str = ""  # folder of images, or Parquet with a phash column
        max_distance: int = 6  # pHash bits
        image_size: int = 256  # for a folder: the recipe's resize.image_size ...
        resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = "border"  # ... and resize_mode

        def __post_init__(self) -> None:
            check_range("decontaminate.max_distance", self.max_distance, 0, 31)
            check_range("decontaminate.image_size", self.image_size, 1, 65536)

    def check(self) -> None:
        path = self.params.eval_set
        if not path:
            raise ParamError("decontaminate.eval_set: give a folder of images or a Parquet file with a phash column")
        if not os.path.exists(path):
            raise FileNotFoundError(f"decontaminate.eval_set: {path} does not exist")
        if os.path.isdir(path):
            if not any(p.is_file() for p in Path(path).rglob("*")):
                raise ValueError(f"decontaminate.eval_set: the folder {path} holds no files")
        elif "phash" not in pq.read_schema(path).names:
            raise ValueError(f"decontaminate.eval_set: {path} has no 'phash' column")

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        p = self.params
        self._eval = load_eval_set(p.eval_set, p.image_size, p.resize_mode)

    def score_one(self, sample: Sample) -> None:
        try:
            signature = sample_signature(sample, "none")
        except UnreadableImage:
            return  # no phash field: keep() drops it
        match = self._eval.nearest(SignatureArrays.of([signature.payload()]), self.params.max_distance)
        if match is not None:
            sample.fields["eval_match"], sample.fields["eval_distance"] = match

    def keep(self, sample: Sample) -> Verdict:
        if "phash" not in sample.fields:
            return drop("unreadable_image")
        if "eval_match" in sample.fields:
            return drop("eval_overlap")
        return KEEP


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m filters.decontaminate",
        description="Hash a folder of evaluation images into a Parquet index for the decontaminate stage.",
    )
    parser.add_argument("folder")
    parser.add_argument("output", help="Parquet file to write (name, phash, colour_grid)")
    parser.add_argument("--image-size", type=int, default=256, help="the recipe's resize.image_size")
    parser.add_argument("--resize-mode", default="border", choices=["no", "keep_ratio", "center_crop", "border"])
    args = parser.parse_args(argv)
    names, payloads = hash_folder(args.folder, ResizeParams(image_size=args.image_size, resize_mode=args.resize_mode))
    if not payloads:
        print(f"no readable image in {args.folder}", file=sys.stderr)
        return 1
    write_index(names, payloads, args.output)
    print(f"{len(names)} images hashed into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
