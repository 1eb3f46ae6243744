"""An evaluation set's image signatures, for the decontaminate stage.

`eval_set` is a folder of images (hashed after the recipe's resize) or a
Parquet index of them (`curate eval-index FOLDER OUT.parquet` writes one, so
workers need not hash a large folder each).
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.params import ParamError
from pipeline.dedup.image_signatures import GRID_BYTES, SignatureArrays, UnreadableImage, near_matrix, signature_of_bytes
from pipeline.media.imaging import ImageRejected, ResizeParams, process_image

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


def check_eval_set(path: str) -> None:
    """Before the run: the eval set exists and is a folder of files or a Parquet index with a phash column."""
    if not path:
        raise ParamError("decontaminate.eval_set: give a folder of images or a Parquet file with a phash column")
    if not os.path.exists(path):
        raise FileNotFoundError(f"decontaminate.eval_set: {path} does not exist")
    if os.path.isdir(path):
        if not any(p.is_file() for p in Path(path).rglob("*")):
            raise ValueError(f"decontaminate.eval_set: the folder {path} holds no files")
    elif "phash" not in pq.read_schema(path).names:
        raise ValueError(f"decontaminate.eval_set: {path} has no 'phash' column")
