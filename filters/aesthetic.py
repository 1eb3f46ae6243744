"""LAION-style aesthetic score: a small head over the CLIP image embedding.

LAION-Aesthetics rates images with a head trained on human ratings (SAC, LAION
logos, AVA) over the L2-normalised CLIP image embedding.  Both public heads are
plain chains of linear layers: v1 one `Linear(dim, 1)`, v2 ("improved
aesthetic predictor", on OpenAI ViT-L/14) five linear layers with dropout and
no activation in between.  `head_path` is such a head as a torch state_dict
(`.pth`); its linear layers (2-D `*weight` tensors with their `*bias`) are
chained in their natural key order ("layers.0", "layers.2", ..., "layers.7").
A head with non-linear activations cannot be read from a state_dict alone and
is not supported.  The defaults name the v2 head's CLIP model; LAION-Aesthetics
v2 subsets used thresholds 5, 6 and 6.5.

The embedding comes from `fields["clip_image_embedding"]` when an earlier
`clip_score` stage stored it (`store_embeddings: true`) and it has the head's
input size; that stage must then use the same CLIP model as the head expects,
which this stage cannot verify.  Otherwise (or with `reuse_embedding: false`)
it is computed here with `model`/`pretrained`.

Field: `aesthetic_score` (None for an image that does not decode).  With a
threshold, lower scores are dropped as `low_aesthetic_score`.  With
`store_embeddings`, the image embeddings it computed (not the ones it
reused: those are clip_score's) are kept as `aesthetic_image_embedding`,
float16, in the Parquet or, with `embeddings_file: npz`, in DataComp's
`shards/<shard>.npz` as `l14_img` for the default ViT-L-14 (see clip_score).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.core.stage import Filter, Needs, StageContext
from pipeline.models import embedding_output
from pipeline.models.openclip import (
    ModelLoadError,
    ModelSource,
    encoder_for,
    open_image,
    min_score_verdict,
)
from pipeline.core.registry import register
from pipeline.core.records import Sample, Verdict

EMBEDDING_FIELD = "clip_image_embedding"
STORED_FIELD = "aesthetic_image_embedding"


@register
class Aesthetic(Filter):
    name = "aesthetic"
    NEEDS = Needs(model=True)

    @dataclass(frozen=True)
    class Params:
        head_path: str | None = None  # the aesthetic head, a torch state_dict of linear layers (.pth)
        threshold: float | None = None  # drop scores below this (LAION-Aesthetics v2: 5, 6, 6.5); null: only score
        reuse_embedding: bool = True  # use clip_score's stored clip_image_embedding when its size fits
        store_embeddings: bool = False  # keep the float16 image embeddings computed here (aesthetic_image_embedding)
        # where stored embeddings go: Parquet list<float16> columns, or DataComp's shards/<shard>.npz
        embeddings_file: Literal["parquet", "npz"] = "parquet"
        embeddings_name: str | None = None  # .npz array prefix (<name>_img); null: from model (ViT-L-14: l14)
        model: str = "ViT-L-14-quickgelu"
        pretrained: str = "openai"
        model_config: str | None = None
        pretrained_tag: str | None = None  # the open_clip tag a checkpoint file holds ("openai")
        batch_size: int = 32
        device: str = "cpu"

        def __post_init__(self):
            embedding_output.check(self, "aesthetic")

    def source(self) -> ModelSource:
        return ModelSource.of(self.params)

    def check(self) -> None:
        load_head(self.params.head_path)
        self.source().check()

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        self.head = load_head(self.params.head_path).to(self.params.device)
        self.input_size = self.head[0].in_features
        self._encoder = None  # loaded on the first sample without a stored embedding

    def npz_arrays(self) -> dict[str, str]:
        return embedding_output.npz_arrays(self.params, {STORED_FIELD: "img"})

    def score(self, batch: list[Sample]) -> None:
        import torch

        embeddings = {i: self._stored_embedding(sample) for i, sample in enumerate(batch)}
        missing = [i for i, embedding in embeddings.items() if embedding is None]
        images = {i: open_image(batch[i].image) for i in missing}
        decoded = [i for i in missing if images[i] is not None]
        computed = {}
        if decoded:
            computed = dict(zip(decoded, self._encoder_instance().encode_images([images[i] for i in decoded])))
            embeddings.update(computed)
        scored = [i for i, embedding in embeddings.items() if embedding is not None]
        scores = {}
        if scored:
            stacked = torch.stack([embeddings[i] for i in scored]).to(self.params.device)
            with torch.inference_mode():
                scores = dict(zip(scored, self.head(stacked).squeeze(1).tolist()))
        for i, sample in enumerate(batch):
            sample.fields["aesthetic_score"] = scores.get(i)
            if self.params.store_embeddings:
                sample.fields[STORED_FIELD] = embedding_output.float16_list(computed.get(i))

    def _stored_embedding(self, sample: Sample):
        import torch

        stored = sample.fields.get(EMBEDDING_FIELD)
        if not self.params.reuse_embedding or not stored or len(stored) != self.input_size:
            return None
        # Stored embeddings are float16-rounded: renormalise what the head expects.
        return torch.nn.functional.normalize(torch.tensor(stored, dtype=torch.float32), dim=0)

    def _encoder_instance(self):
        if self._encoder is None:
            self._encoder = encoder_for(self.source())
        return self._encoder

    def keep(self, sample: Sample) -> Verdict:
        return min_score_verdict(sample, "aesthetic_score", self.params.threshold, "low_aesthetic_score", needs_caption=False)


def load_head(head_path: str | None):
    """The head as a torch Sequential of Linear layers, checked to map an embedding to one score."""
    import torch

    if not head_path:
        raise ModelLoadError("aesthetic.head_path is required: a torch state_dict of the aesthetic head")
    path = Path(head_path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"aesthetic head {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean "not a state_dict"
        raise ModelLoadError(f"aesthetic head {str(path)!r} is not a torch state_dict: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    layers = [_linear(state, prefix, path) for prefix in _linear_prefixes(state, path)]
    for before, after in zip(layers, layers[1:]):
        if before.out_features != after.in_features:
            raise ModelLoadError(f"aesthetic head {str(path)!r}: layer sizes do not chain "
                                 f"({before.out_features} -> {after.in_features})")
    if layers[-1].out_features != 1:
        raise ModelLoadError(f"aesthetic head {str(path)!r} outputs {layers[-1].out_features} values, not one score")
    return torch.nn.Sequential(*layers).eval()


def _linear_prefixes(state: Any, path: Path) -> list[str]:
    """Prefixes ("", "layers.0.") of the 2-D weights, in natural order (layers.2 before layers.10)."""
    import torch

    if not isinstance(state, dict):
        raise ModelLoadError(f"aesthetic head {str(path)!r} holds a {type(state).__name__}, not a state_dict")
    prefixes = [key[: -len("weight")] for key, value in state.items()
                if key.endswith("weight") and isinstance(value, torch.Tensor) and value.dim() == 2]
    if not prefixes:
        raise ModelLoadError(f"aesthetic head {str(path)!r} has no linear layer weights")
    return sorted(prefixes, key=lambda p: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", p)])


def _linear(state: dict, prefix: str, path: Path):
    import torch

    weight = state[f"{prefix}weight"]
    bias = state.get(f"{prefix}bias")
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            if bias.shape != (weight.shape[0],):
                raise ModelLoadError(f"aesthetic head {str(path)!r}: {prefix}bias does not fit {prefix}weight")
            layer.bias.copy_(bias)
    return layer
