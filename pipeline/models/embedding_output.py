"""Where a model stage's stored embeddings go: Parquet columns, or DataComp-style `.npz` arrays.

`clip_score` and `aesthetic` keep their float16 embeddings as sample fields
(`clip_image_embedding`, ...).  By default the shards store those as
`list<float16>` Parquet columns.  With `embeddings_file: npz` they go to
`shards/<shard>.npz` instead, under DataComp's array names: `<prefix>_img`
and `<prefix>_txt`, the prefix named after the model as DataComp names its
OpenAI models (ViT-B-32 -> `b32`, ViT-L-14 -> `l14`), or `embeddings_name`.
The writer (pipeline.engine.embedding_files) collects the field -> array names of
every stage and refuses two stages writing the same array.
"""
from __future__ import annotations

import re
from typing import Any

from pipeline.core.params import ParamError

_ARRAY_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")


def array_prefix(model: str, name: str | None = None) -> str:
    """`name`, else DataComp's prefix for the open_clip architecture `model` (ViT-L-14-quickgelu -> l14);
    an architecture that is not a ViT by its lower-cased name (RN50 -> rn50)."""
    if name:
        return name
    vit = re.match(r"ViT-([^-]+)-(\d+)", model)
    if vit:
        return f"{vit[1].lower()}{vit[2]}"
    return re.sub(r"[^0-9a-z]+", "_", model.lower()).strip("_") or "model"


def check(params: Any, stage: str) -> None:
    """Fail on a recipe asking for an `.npz` of nothing, or for an array name numpy cannot load back."""
    if params.embeddings_file == "npz" and not params.store_embeddings:
        raise ParamError(f"{stage}.embeddings_file=npz needs {stage}.store_embeddings: true")
    if params.embeddings_name is not None and not _ARRAY_NAME.fullmatch(params.embeddings_name):
        raise ParamError(f"{stage}.embeddings_name must be lower-case letters, digits and _, "
                         f"got {params.embeddings_name!r}")


def npz_arrays(params: Any, fields: dict[str, str]) -> dict[str, str]:
    """field -> `.npz` array name, for `fields` ({field: "img" or "txt"}) when the stage stores them there."""
    if not (params.store_embeddings and params.embeddings_file == "npz"):
        return {}
    prefix = array_prefix(params.model, params.embeddings_name)
    return {field: f"{prefix}_{kind}" for field, kind in fields.items()}


def float16_list(embedding) -> list[float] | None:
    """A torch embedding as the float16-rounded list a sample field holds (None stays None)."""
    import torch

    return None if embedding is None else embedding.to(torch.float16).tolist()
