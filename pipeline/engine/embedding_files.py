"""Embeddings beside each shard in DataComp's `.npz` layout: `shards/<shard>.npz`.

DataComp ships each metadata shard as `<shard>.parquet` plus `<shard>.npz`,
whose arrays (`b32_img`, `b32_txt`, `l14_img`, `l14_txt`: float16, one row
per sample) are in the order of the Parquet's rows; its tools read
`np.load(f"{shard}.npz")[key]` and line rows up with the Parquet's `uid`s by
position.  Here the same: one `.npz` per shard, rows in the order of the
shard's samples (key order, as in the tar and the Parquet), float16, plus a
`key` array (the samples' keys, as a numpy string array) so a file can be
checked against its shard on its own.  A sample without that embedding (no
caption for a text embedding) has a row of NaN; an array no sample of the
shard has is (rows, 0).

Which sample fields go there and under which names is decided by the stages
(`Stage.npz_arrays`, e.g. clip_score's `embeddings_file: npz`); those fields
then leave the Parquet and the `.json`.  The archive is written like
`np.savez` (uncompressed `.npy` members) but with fixed member times, so a
re-run writes identical bytes; `np.load` reads it.
"""
from __future__ import annotations

import io
import zipfile
from typing import Any, Iterable

import numpy as np

KEY_ARRAY = "key"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no run's clock ends up in the file


class EmbeddingArraysError(ValueError):
    """Two stages would write the same `.npz` array."""


def npz_arrays_of(stages: Iterable[Any]) -> dict[str, str]:
    """field -> array name over the recipe's stages; an error if two fields claim one array."""
    arrays: dict[str, str] = {}
    owners = {KEY_ARRAY: "the sample keys"}
    for stage in stages:
        for field, array in stage.npz_arrays().items():
            if array in owners and owners[array] != field:
                raise EmbeddingArraysError(
                    f"{stage.name}: the .npz array {array!r} would hold both {field} and {owners[array]}; "
                    f"give the stage another embeddings_name")
            owners[array] = field
            arrays[field] = array
    return arrays


class ShardArrays:
    """The rows of one shard's `.npz`, added sample by sample in the shard's order."""

    def __init__(self, arrays: dict[str, str]):
        self._arrays = arrays
        self._keys: list[str] = []
        self._vectors: dict[str, list[Any]] = {array: [] for array in arrays.values()}

    def add(self, key: str, fields: dict[str, Any]) -> None:
        self._keys.append(key)
        for field, array in self._arrays.items():
            self._vectors[array].append(fields.get(field))

    def arrays(self) -> dict[str, np.ndarray]:
        result = {KEY_ARRAY: np.array(self._keys, dtype=str)}
        result.update({array: _matrix(rows) for array, rows in sorted(self._vectors.items())})
        return result


def _matrix(rows: list[Any]) -> np.ndarray:
    """float16 (rows, dim); NaN rows where a sample has no embedding."""
    dim = next((len(row) for row in rows if row is not None), 0)
    matrix = np.full((len(rows), dim), np.nan, np.float16)
    for i, row in enumerate(rows):
        if row is not None:
            matrix[i] = np.asarray(row, np.float16)
    return matrix


def write_npz(handle, arrays: dict[str, np.ndarray]) -> None:
    """`arrays` as an `.npz` into the open binary `handle`: `np.savez`'s layout, fixed member times."""
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_TIME), "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files}


def without_keys(arrays: dict[str, np.ndarray], removed: set[str]) -> dict[str, np.ndarray]:
    """Every array without the rows of `removed` keys (a takedown)."""
    kept = ~np.isin(arrays[KEY_ARRAY], sorted(removed))
    return {name: array[kept] for name, array in arrays.items()}


def problems(name: str, arrays: dict[str, np.ndarray], keys: list[str]) -> list[str]:
    """What makes `shards/<name>.npz` disagree with its shard's keys (in order)."""
    if KEY_ARRAY not in arrays:
        return [f"shards/{name}.npz has no {KEY_ARRAY!r} array"]
    if arrays[KEY_ARRAY].tolist() != keys:
        return [f"shards/{name}.npz lists other keys than shards/{name}.parquet, or in another order"]
    short = sorted(array for array, values in arrays.items() if len(values) != len(keys))
    return [f"shards/{name}.npz: arrays {short} do not have one row per sample ({len(keys)})"] if short else []
