"""NSFW score per image: NudeNet's detector, or LAION's CLIP-embedding head.

Default: the NudeNet 3.4 detector (`320n.onnx`, a YOLOv8n exported to ONNX,
12 MB) that ships inside the `nudenet` package, run with onnxruntime on a
whole batch at once.  Preprocessing is NudeNet's own: pad the image at the
right/bottom to a square with black, resize to 320x320 (bilinear), scale
to [0, 1], channels in B, G, R order.  (NudeNet 3.4 converts its BGR image
with `cv2.COLOR_RGBA2BGR`, which swaps red and blue, then `blobFromImage(...,
swapRB=True)` swaps them back, so its model sees BGR; we do the same so our
scores equal `NudeDetector.detect`'s.)  The model outputs, for each of 2100
anchor boxes, a confidence per class.

    nsfw_score = max over anchors and over SEXUAL_EXPOSED_CLASSES of the confidence

i.e. the confidence of the most confident exposed-body-part detection (NMS
only removes overlapping boxes, never the most confident one, so it is not
needed for the max).  FEET, ARMPITS, BELLY and MALE_BREAST "exposed" are left
out: they are everyday beach and sports photos, not NSFW.

`detector_side` (default 320, NudeNet's own) is the side the padded square
is scaled to; the model accepts any multiple of 32 and any batch size.  The
cost grows with its square: one core spends ~35 ms per image at 320 and
~22-24 ms at 256 (benchmarks/bench_onnx_stages.py).  A smaller side changes the
scores: on 240 generated benign images side 256 moved them by up to 0.25
(every verdict at 0.5 unchanged), but there is no labelled NSFW set here, so
its accuracy on real nudity is unmeasured -- hence the default stays 320.
face_blur always runs the detector at 320; with another side here, each
stage runs it on its own (results at different sides are never mixed).
The session runs on one thread (pipeline.models.common.onnx_session).

The detector is shared with `face_blur` (pipeline.models.common's
`nudenet_detections`): it is loaded once per process, and an image whose
exact bytes it ran on recently in this process is not run again, so with
both stages each image costs one detector run.  Put `nsfw` BEFORE
`face_blur`: face_blur then reuses the detections of every image, and nsfw
judges the image as downloaded (and drops, with `action="drop"`, before
any blurring work).  After face_blur, nsfw scores the blurred image, as it
would alone: reuse only happens for images face_blur left unchanged.
Nothing is added to the samples for this, so the written metadata is
unchanged.  Reuse needs both stages in one process (Beam fuses them unless a
whole-dataset stage sits between them); otherwise the detector runs again,
with the same results.

With `clip_head_path` set, the score comes instead from a small classifier
over the CLIP image embedding that an earlier `clip_score` stage (with
`store_embeddings: true`) wrote to
`sample.fields["clip_image_embedding"]`, as LAION-5B did.  The file is a
torch state_dict of
* one `nn.Linear` (keys `weight`, `bias`) or an `nn.Sequential` of Linear
  layers (keys `<i>.weight`, `<i>.bias`, optionally under `layers.` as in
  LAION's H14 head); a gap in the indices means a ReLU (see
  `mlp_from_state_dict`); or
* LAION's ViT-B-32 / ViT-L-14 heads (LAION-AI/CLIP-based-NSFW-Detector,
  `NSFWModel_B32`/`_L14`: keys `norm.mean`, `norm.variance`, `linear_1` ...
  `linear_n`): `(x - mean) / (sqrt(variance) + 1e-10)`, then the Linear layers
  with a ReLU after each but the last, then a sigmoid (applied as for any
  one-unit logit).
Its input size must equal the embedding size; the embedding is L2-normalised
first (`F.normalize`), as LAION's heads expect.  Its output is one unit
(sigmoid of it, or the raw value clipped to [0, 1] when
`clip_head_output="probability"`, for regressors such as LAION's H14 head)
or two units (softmax, class 1 = NSFW).

Writes `nsfw_score` in [0, 1].  Verdicts: with `action="tag"` (LAION-5B's
choice) every scored sample is kept and carries its score; with
`action="drop"` samples scoring >= `threshold` are dropped as `nsfw`.
Samples that cannot be scored are dropped as `image_unreadable` or
`missing_clip_embedding` (that `clip_score` stage must run first).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.core.stage import Filter, Needs, StageContext
from pipeline.models.common import (
    NUDENET_CLASSES,
    NUDENET_INPUT_SIDE,
    existing_file,
    mlp_from_state_dict,
    nudenet_detections,
    nudenet_model_file,
    nudenet_session,
    read_state_dict,
    tag_or_drop,
)
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import Sample, Verdict

SEXUAL_EXPOSED_CLASSES = (
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_EXPOSED",
)
CLIP_EMBEDDING_FIELD = "clip_image_embedding"
_EXPOSED_INDICES = np.array([NUDENET_CLASSES.index(c) for c in SEXUAL_EXPOSED_CLASSES])


@register
class NsfwFilter(Filter):
    name = "nsfw"
    NEEDS = Needs(model=True)

    @dataclass(frozen=True)
    class Params:
        threshold: float = 0.5  # nsfw_score at or above this is NSFW
        action: Literal["drop", "tag"] = "tag"  # drop NSFW samples, or only tag them (LAION)
        batch_size: int = 16  # NudeNet: ~35 ms of CPU per image at side 320 (benchmarks/bench_onnx_stages.py)
        detector_side: int = NUDENET_INPUT_SIDE  # NudeNet's input side, multiple of 32: cost grows with its square
        clip_head_path: str | None = None  # LAION-style head over clip_image_embedding instead of NudeNet
        clip_head_output: Literal["logit", "probability"] = "logit"  # the head's output (LAION H14: probability)

        def __post_init__(self):
            if self.detector_side < 64 or self.detector_side % 32:
                raise ParamError(f"nsfw.detector_side must be a multiple of 32, at least 64, got {self.detector_side}")

    def check(self) -> None:
        if self.params.clip_head_path:
            ClipHeadScorer(self._model_file(), self.params.clip_head_output)  # small: load it to check its shape
        else:
            self._model_file()

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        self.model_path = self._model_file()
        if self.params.clip_head_path:
            self._scorer = ClipHeadScorer(self.model_path, self.params.clip_head_output)
        else:
            nudenet_session()  # load it now, not on the first batch
            self._scorer = NudeNetScorer(self.params.detector_side)

    def _model_file(self) -> Path:
        if self.params.clip_head_path:
            return existing_file(self.params.clip_head_path, "NSFW CLIP head")
        return nudenet_model_file()

    def score(self, batch: list[Sample]) -> None:
        for sample, score in zip(batch, self._scorer.scores(batch)):
            if score is not None:
                sample.fields["nsfw_score"] = round(score, 4)

    def keep(self, sample: Sample) -> Verdict:
        missing = "missing_clip_embedding" if self.params.clip_head_path else "image_unreadable"
        p = self.params
        return tag_or_drop(sample.fields.get("nsfw_score"), p.threshold, p.action, "nsfw", missing)


class NudeNetScorer:
    def __init__(self, side: int):
        self._side = side

    def scores(self, batch: list[Sample]) -> list[float | None]:
        detections = nudenet_detections([sample.image for sample in batch], side=self._side)
        return [None if found is None else exposed_confidence(found.class_top) for found in detections]


def exposed_confidence(class_top: np.ndarray) -> float:
    """The top confidence of an exposed class, from each class's top confidence over the anchors."""
    return float(class_top[_EXPOSED_INDICES].max().clip(0.0, 1.0))


class ClipHeadScorer:
    def __init__(self, head_path, output: str):
        import torch

        state = read_state_dict(head_path)
        if STANDARDISED_HEAD_KEYS <= set(state):
            if output != "logit":
                raise ValueError(f"{head_path}: LAION's standardised NSFW head ends in a sigmoid of one logit; "
                                 "use clip_head_output: logit")
            self._standardise = state["norm.mean"].float(), state["norm.variance"].float().sqrt() + 1e-10
            self._head = standardised_head_layers(state)
        else:
            self._standardise = None
            prefix = "layers." if any(key.startswith("layers.") for key in state) else ""
            self._head = mlp_from_state_dict(state, prefix)
        self._output = output
        linear_layers = [m for m in self._head.modules() if isinstance(m, torch.nn.Linear)]
        self.input_size = linear_layers[0].in_features
        self.output_size = linear_layers[-1].out_features
        if self.output_size not in (1, 2):
            raise ValueError(f"{head_path}: an NSFW head must have 1 or 2 outputs, this one has {self.output_size}")

    def scores(self, batch: list[Sample]) -> list[float | None]:
        import torch

        embeddings = [sample.fields.get(CLIP_EMBEDDING_FIELD) for sample in batch]
        present = [i for i, embedding in enumerate(embeddings) if embedding is not None]
        results: list[float | None] = [None] * len(batch)
        if not present:
            return results
        matrix = torch.tensor(np.asarray([embeddings[i] for i in present], dtype=np.float32))
        if matrix.shape[1] != self.input_size:
            raise ValueError(
                f"the NSFW head takes {self.input_size}-d embeddings but {CLIP_EMBEDDING_FIELD} has "
                f"{matrix.shape[1]}: use the head trained for the CLIP model of the clip stage"
            )
        matrix = torch.nn.functional.normalize(matrix, dim=1)
        if self._standardise is not None:
            mean, scale = self._standardise
            matrix = (matrix - mean) / scale
        with torch.inference_mode():
            output = self._head(matrix)
        for i, score in zip(present, self._probabilities(output).tolist()):
            results[i] = float(score)
        return results

    def _probabilities(self, output):
        import torch

        if self.output_size == 2:
            return torch.softmax(output, dim=1)[:, 1]
        if self._output == "probability":
            return output[:, 0].clamp(0.0, 1.0)
        return torch.sigmoid(output[:, 0])


STANDARDISED_HEAD_KEYS = {"norm.mean", "norm.variance", "linear_1.weight"}


def standardised_head_layers(state: dict):
    """LAION's NSFWModel_B32/_L14 between its input standardisation and its sigmoid:
    linear_1, ReLU, linear_2, ReLU, ..., linear_n."""
    import torch

    count = len([key for key in state if key.startswith("linear_") and key.endswith(".weight")])
    layers = []
    for number in range(1, count + 1):
        weight, bias = state[f"linear_{number}.weight"], state[f"linear_{number}.bias"]
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        layers += [layer, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).eval()
