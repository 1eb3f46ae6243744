"""Watermark score per image: overlaid text found by an OCR text detector.

Default: the PP-OCRv4 text *detector* shipped inside `rapidocr-onnxruntime`
(pipeline.models.text_regions, shared with clip_score's `mask_text`), with the longer
side scaled to `detector_side` (default 512) to bound the cost.  Images go
through the detector one at a time (`batch_size` only sets how many
RunInference hands over at once): at their own aspect ratios nothing is
padded, and on CPU a stacked batch is no faster per image.  The session
runs on one thread (one worker process per core; onnxruntime's default
thread pool doubled the CPU time per image).  The side stays 512: the
detector costs ~60 ms of one core there, and smaller sides lose recall on
`benchmarks/watermark_eval.py` (see benchmarks/README.md, "ONNX stages on
CPU"); onnxruntime's `quantize_dynamic` cannot quantize this model (a Conv
whose weight is not an initializer), and static int8 (after folding) was
5-10% faster but lost recall.

The score, with every term in [0, 1]:

    per detected box b (DB box confidence c_b, which is >= 0.5):
      confidence_b = clamp((c_b - 0.3) / 0.4)           # 0.3: DB's binarisation threshold
      strokes_b    = clamp((edge_cells_b - 0.1) / 0.25)  # letters are many sharp edges
      line_b       = clamp((0.5 - thickness_b) / 0.2)    # a text line is a band
      text_b       = confidence_b * strokes_b * line_b
    text      = max_b text_b                             # 0 when nothing is detected
    (the cues below look only at text boxes: text_b >= 0.5)
    placement = 1 if a text box is centred in the middle 30 % of the image,
                within 15 % of the top or bottom edge, or in a corner (within
                25 % of two edges) -- where watermarks go; else 0
    tiling    = clamp((n_similar - 2) / 4), n_similar = text boxes whose
                height is within 25 % of their median height
    area      = clamp(text-box area / image area / 0.03)
    watermark_score = text * (0.55 + 0.30 * max(placement, tiling) + 0.15 * area)

`edge_cells_b` is the share of cells, in a grid of 32 rows laid over the
box's bounding rectangle, where at least 10 % of the pixels have a Sobel
gradient above 40 (a sharp step of ~10 grey levels) at full resolution.
Letters put edges in a third or more of the cells whatever their size;
flat shapes and blurry colour blobs that the detector mistakes for text
stay under a quarter.  `thickness_b` is the box's short side over the
image's short side: a box half the image tall is a region, not a line.

So clear text anywhere scores at least 0.55, and placement, tiling and area
lift typical watermarks further above the default threshold of 0.5; a
detection the stroke or line checks reject stays near 0.  The constants were
set by hand on `benchmarks/watermark_eval.py` seeds 1-3 (the tests use
seed 0): precision 1.0, recall 0.90-0.97, every miss an image where the
detector found no box at all (mostly text over high-contrast stripes).

With `classifier_path` set, a LAION-style classifier replaces the detector:
`timm.create_model(classifier_arch, pretrained=False, num_classes=2)` with
the state_dict from the file (LAION's `watermark_model_v1.pt` is
efficientnet_b3a with a 1536-625-256-2 MLP head, which is rebuilt from the
state_dict's shapes), input resized to 256x256 with ImageNet mean/std, and
`watermark_score = softmax(logits)[classifier_watermark_class]` (LAION: 0).

Writes `watermark_score`.  Verdicts: `action="tag"` keeps every scored
sample; `action="drop"` drops those scoring >= `threshold` as `watermark`.
Unreadable images are dropped as `image_unreadable`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.core.stage import Filter, Needs, StageContext
from pipeline.models.common import (
    decode_rgb,
    existing_file,
    mlp_from_state_dict,
    read_state_dict,
    tag_or_drop,
)
from pipeline.models.text_regions import TextDetector, check_side, detector_file
from pipeline.core.registry import register
from pipeline.core.records import Sample, Verdict

CLASSIFIER_INPUT_SIDE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@register
class WatermarkFilter(Filter):
    name = "watermark"
    NEEDS = Needs(model=True)

    @dataclass(frozen=True)
    class Params:
        threshold: float = 0.5  # watermark_score at or above this is a watermark
        action: Literal["drop", "tag"] = "tag"  # drop watermarked samples, or only tag them (LAION)
        batch_size: int = 16
        detector_side: int = 512  # longer side for the text detector, multiple of 32; cost grows with its square
        classifier_path: str | None = None  # LAION-style timm classifier instead of the text detector
        classifier_arch: str = "efficientnet_b3a"  # timm architecture of classifier_path
        classifier_watermark_class: int = 0  # its output index for "watermark" (LAION: 0)

        def __post_init__(self):
            check_side(self.detector_side, "watermark.detector_side")

    def check(self) -> None:
        self._model_file()
        if self.params.classifier_path:
            import timm

            if not timm.is_model(self.params.classifier_arch):
                raise ValueError(f"watermark.classifier_arch: timm has no model {self.params.classifier_arch!r}")

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        self.model_path = self._model_file()
        if self.params.classifier_path:
            self._scorer = ClassifierScorer(
                self.model_path, self.params.classifier_arch, self.params.classifier_watermark_class
            )
        else:
            self._scorer = TextDetectorScorer(self.model_path, self.params.detector_side)

    def _model_file(self) -> Path:
        if self.params.classifier_path:
            return existing_file(self.params.classifier_path, "watermark classifier")
        return detector_file()

    def score(self, batch: list[Sample]) -> None:
        images = [decode_rgb(sample.image) for sample in batch]
        readable = [i for i, image in enumerate(images) if image is not None]
        scores = self._scorer.scores([images[i] for i in readable]) if readable else []
        for i, score in zip(readable, scores):
            batch[i].fields["watermark_score"] = round(float(score), 4)

    def keep(self, sample: Sample) -> Verdict:
        p = self.params
        return tag_or_drop(sample.fields.get("watermark_score"), p.threshold, p.action, "watermark", "image_unreadable")


# Text detector --------------------------------------------------------------


@dataclass(frozen=True)
class TextBox:
    confidence: float  # DB box score
    strokes: float  # scale-normalised edge density inside the box
    thickness: float  # short side / image short side
    height: float  # short side, pixels
    area: float  # fraction of the image
    centre: tuple[float, float]  # (x, y) as fractions of width and height

    @property
    def text_likeness(self) -> float:
        confidence = _clamp((self.confidence - 0.3) / 0.4)
        strokes = _clamp((self.strokes - 0.1) / 0.25)
        line = _clamp((0.5 - self.thickness) / 0.2)
        return confidence * strokes * line


class TextDetectorScorer:
    def __init__(self, model_path, side: int):
        self._detector = TextDetector(model_path, side)

    def scores(self, images) -> list[float]:
        return [watermark_score(self.text_boxes(image)) for image in images]

    def text_boxes(self, image) -> list[TextBox]:
        return self._boxes(image, *self._detector.regions(image))

    def boxes_from_map(self, probability_map: np.ndarray, image) -> list[TextBox]:
        """The post-processing: DB boxes from the detector's output, then each box's cues."""
        return self._boxes(image, *self._detector.regions_from_map(probability_map, image))

    def _boxes(self, image, polygons, confidences) -> list[TextBox]:
        gray = np.asarray(image.convert("L"), np.float32)
        return [_text_box(gray, polygon, confidence) for polygon, confidence in zip(polygons, confidences)]


def _text_box(gray: np.ndarray, polygon: np.ndarray, confidence: float) -> TextBox:
    import cv2

    image_height, image_width = gray.shape
    (centre_x, centre_y), (side_a, side_b), _angle = cv2.minAreaRect(polygon.astype(np.float32))
    short_side = min(side_a, side_b)
    return TextBox(
        confidence=float(confidence),
        strokes=_edge_density(gray, polygon),
        thickness=short_side / min(image_height, image_width),
        height=short_side,
        area=float(cv2.contourArea(polygon.astype(np.float32))) / (image_height * image_width),
        centre=(centre_x / image_width, centre_y / image_height),
    )


EDGE_GRID_ROWS = 32
EDGE_GRADIENT_LEVEL = 40.0  # Sobel magnitude; a sharp step of ~10 grey levels
EDGE_CELL_SHARE = 0.1  # a grid cell "has an edge" when this share of its pixels do


def _edge_density(gray: np.ndarray, polygon: np.ndarray) -> float:
    """Share of the cells of a 32-row grid over the box that hold sharp edges.

    Edges are found at full resolution (a blurry gradient has none, however
    the box is scaled); the grid makes big and small letters comparable.
    """
    import cv2

    x0, y0 = np.maximum(polygon.min(axis=0), 0)
    x1, y1 = polygon.max(axis=0)
    crop = gray[y0 : y1 + 1, x0 : x1 + 1]
    if min(crop.shape) < 3:
        return 0.0
    magnitude = np.hypot(cv2.Sobel(crop, cv2.CV_32F, 1, 0), cv2.Sobel(crop, cv2.CV_32F, 0, 1))
    edges = (magnitude > EDGE_GRADIENT_LEVEL).astype(np.float32)
    scale = EDGE_GRID_ROWS / min(crop.shape)
    grid = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    cells = cv2.resize(edges, grid, interpolation=cv2.INTER_AREA)
    return float((cells > EDGE_CELL_SHARE).mean())


def watermark_score(boxes: list[TextBox]) -> float:
    """Combine the text boxes of one image into a score in [0, 1] (formula in the module doc)."""
    text = max((box.text_likeness for box in boxes), default=0.0)
    if text == 0.0:
        return 0.0
    texty = [box for box in boxes if box.text_likeness >= 0.5]
    placement = 1.0 if any(_watermark_position(box.centre) for box in texty) else 0.0
    area = _clamp(sum(box.area for box in texty) / 0.03)
    return text * (0.55 + 0.30 * max(placement, _tiling(texty)) + 0.15 * area)


def _watermark_position(centre: tuple[float, float]) -> bool:
    x, y = centre
    middle = abs(x - 0.5) <= 0.15 and abs(y - 0.5) <= 0.15
    top_or_bottom = min(y, 1 - y) <= 0.15
    corner = min(x, 1 - x) <= 0.25 and min(y, 1 - y) <= 0.25
    return middle or top_or_bottom or corner


def _tiling(boxes: list[TextBox]) -> float:
    if len(boxes) < 3:
        return 0.0
    median = float(np.median([box.height for box in boxes]))
    similar = sum(abs(box.height - median) <= 0.25 * median for box in boxes)
    return _clamp((similar - 2) / 4)


def _clamp(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _bilinear():
    from PIL import Image

    return Image.Resampling.BILINEAR


# LAION-style classifier -----------------------------------------------------


class ClassifierScorer:
    def __init__(self, path, arch: str, watermark_class: int):
        import timm
        import torch

        state = read_state_dict(path)
        model = timm.create_model(arch, pretrained=False, num_classes=2)
        head_name = model.pretrained_cfg.get("classifier", "classifier")
        if any(key.startswith(f"{head_name}.0.") for key in state):
            # An MLP head (LAION's watermark_model_v1.pt): rebuild it from the weights.
            model.set_submodule(head_name, mlp_from_state_dict(state, f"{head_name}."))
        model.load_state_dict(state)
        self._model = model.eval()
        self._class = watermark_class
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.inference_mode():
            outputs = self._model(torch.zeros(1, 3, CLASSIFIER_INPUT_SIDE, CLASSIFIER_INPUT_SIDE)).shape[1]
        if not 0 <= watermark_class < outputs:
            raise ValueError(
                f"watermark.classifier_watermark_class={watermark_class}, but the model has {outputs} outputs"
            )

    def scores(self, images) -> list[float]:
        import torch

        size = (CLASSIFIER_INPUT_SIDE, CLASSIFIER_INPUT_SIDE)
        pixels = np.stack([np.asarray(image.resize(size, resample=_bilinear()), np.float32) for image in images])
        batch = (torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255.0 - self._mean) / self._std
        with torch.inference_mode():
            probabilities = torch.softmax(self._model(batch), dim=1)[:, self._class]
        return probabilities.tolist()
