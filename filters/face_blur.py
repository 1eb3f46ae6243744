"""Face blurring: blur the faces of each image in place, as img2dataset's
`bbox_col` and DataComp's face blurring do.  A mapper stage: it never drops.

Where the faces are:

* From an input column (`bbox_col`, default DataComp's `face_bboxes`): a list
  of `[x0, y0, x1, y1]` boxes, or a JSON string of one, in coordinates
  normalised to the ORIGINAL image (as displayed, i.e. after EXIF
  orientation).  An empty list means "no faces": nothing is blurred and
  nothing is detected.
* Otherwise, when `detect` is on (no column, no value in it, or a malformed
  value), from a detector: the face classes (FACE_FEMALE, FACE_MALE) of the
  NudeNet 3.4 detector that ships inside the `nudenet` package (`320n.onnx`,
  the `nsfw` stage's model, preprocessed the same way), boxes with a face
  confidence >= `detect_threshold`, non-maximum suppressed, and at least
  `min_face_size` pixels on their shorter side in the output image.
  OpenCV's bundled Haar cascade would be the classic choice, but the
  installed cv2 (5.0, pulled in by rapidocr) no longer has
  `CascadeClassifier`; its `haarcascade_*.xml` files still ship, unused.

The detector is shared with `nsfw` (pipeline.models.common's
`nudenet_detections`): loaded once per process, and not run again on an
image whose exact bytes it ran on recently in this process, when those
results hold face candidates down to `detect_threshold` (they do unless it
is below 0.2, NudeNet's own cut).  So put `face_blur` AFTER `nsfw`: it then
reuses nsfw's detections of every image, and nsfw judges the image as
downloaded.  Before nsfw, the images this stage blurs have new bytes, which
nsfw runs the detector on again (it scores the blurred image, as it would
alone); unchanged images are reused.  Nothing is added to the samples for
this: the written metadata is unchanged.

The stage sees only the resized output image, so column boxes are mapped
through the resize the recipe applied (its `resize` section, which the
pipeline hands to the stage), with pipeline.media.imaging's own plan, so rounding,
crop and padding offsets are the pipeline's exactly.  A sample whose sizes do
not fit that plan gets `face_bbox_error` instead of blurs in the wrong places.

Each box grows by `expand` times its longer side on every side (0.1, as in
img2dataset and the ImageNet face-obfuscation code DataComp followed), then
is blurred with a Gaussian of standard deviation `strength` times that
longer side (0.1, the same sources), or pixelated with cells of that side.
The blurred image is re-encoded in the sample's own format with the recipe's
`resize.encode_quality` (JPEG and WebP lose a little more quality on this
second encode).  Images
with nothing to blur keep their bytes untouched.

Fields: `faces_blurred` (boxes blurred, those still visible in the output
image), `face_boxes_detected` (when the detector ran: its boxes, normalised
to the OUTPUT image), `face_bbox_error` (the column's value could not be
used, and why), `face_blur_error` (the image could not be decoded or
re-encoded; it is kept unblurred).
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFilter

from pipeline.core.stage import Mapper, Needs, StageContext
from pipeline.models.common import (
    NudeNetDetections,
    decode_rgb,
    nudenet_detections,
    nudenet_model_file,
    nudenet_session,
)
from pipeline.media.imaging import ImageRejected, ResizeParams, encode_image, plan_resize
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import Sample

NMS_IOU = 0.45  # NudeNet's own
MAX_COLUMN_BOXES = 256  # more boxes than this in one row is not face data
# Column coordinates may stray slightly outside [0, 1] (detectors' boxes do);
# further out they are probably pixels, not normalised values.
COORDINATE_SLACK = 0.1
MIN_BLUR_PIXELS = 2.0  # however small the face, blur at least this much
ENCODE_FORMATS = typing.get_args(typing.get_type_hints(ResizeParams)["encode_format"])

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


class BoxError(ValueError):
    """The bbox column's value cannot be used; the message goes to `face_bbox_error`."""


@register
class FaceBlur(Mapper):
    name = "face_blur"
    NEEDS = Needs(model=True)

    @dataclass(frozen=True)
    class Params:
        bbox_col: str | None = "face_bboxes"  # input column of normalised [x0, y0, x1, y1] boxes; null: none
        detect: bool = True  # detect faces when the column gives none
        detect_threshold: float = 0.25  # face confidence; NudeNet's own cut is 0.2
        min_face_size: int = 12  # px, shorter side of a detected box in the output image
        blur: Literal["gaussian", "pixelate"] = "gaussian"  # how a face is hidden
        strength: float = 0.1  # Gaussian sigma / pixel cell, as a fraction of the box's longer side
        expand: float = 0.1  # grow each side by this fraction of the box's longer side
        batch_size: int = 16

        def __post_init__(self):
            if self.bbox_col is None and not self.detect:
                raise ParamError("face_blur: with bbox_col null and detect false there is nothing to blur")
            if not 0.0 < self.detect_threshold <= 1.0:
                raise ParamError(f"face_blur.detect_threshold must be in (0, 1], got {self.detect_threshold}")
            if self.strength <= 0:
                raise ParamError(f"face_blur.strength must be positive, got {self.strength}")
            if self.expand < 0:
                raise ParamError(f"face_blur.expand must not be negative, got {self.expand}")
            if self.min_face_size < 0:
                raise ParamError(f"face_blur.min_face_size must not be negative, got {self.min_face_size}")

    def check(self) -> None:
        if self.params.detect:
            self._model_file()

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        if self.params.detect:
            nudenet_session()  # load it now, not on the first batch

    def _model_file(self) -> Path:
        return nudenet_model_file()

    def score(self, batch: list[Sample]) -> None:
        column_boxes = [self._column_boxes(sample) for sample in batch]
        images = [decode_rgb(s.image) if self._needs_pixels(b) else None for s, b in zip(batch, column_boxes)]
        detected = self._detect(batch, images, column_boxes)
        for sample, image, boxes, faces in zip(batch, images, column_boxes, detected):
            sample.fields["faces_blurred"] = 0
            if image is None:
                if self._needs_pixels(boxes):
                    sample.fields["face_blur_error"] = "image_unreadable"
                continue
            if faces is not None:
                sample.fields["face_boxes_detected"] = [_normalised(face, image.size) for face in faces]
                boxes = faces
            if boxes:
                self._blur_and_encode(sample, image, boxes)

    def _needs_pixels(self, column_boxes: list[Box] | None) -> bool:
        """Whether the image must be decoded: boxes to blur, or faces to look for."""
        return bool(column_boxes) or (column_boxes is None and self.params.detect)

    def _column_boxes(self, sample: Sample) -> list[Box] | None:
        """The column's boxes in output-image pixels; None when the column gives no usable value."""
        column = self.params.bbox_col
        if column is None:
            return None
        try:
            boxes = parse_boxes(sample.extra.get(column))
            if boxes is None:
                return None
            placement = Placement.of(sample, self._resize())
            return [placement.to_output(box) for box in boxes]
        except BoxError as err:
            sample.fields["face_bbox_error"] = str(err)
            return None

    def _detect(
        self, batch: list[Sample], images: list[Image.Image | None], column_boxes: list
    ) -> list[list[Box] | None]:
        """Detected faces (pixels) for the images the column says nothing about; None elsewhere."""
        wanted = [i for i, (image, boxes) in enumerate(zip(images, column_boxes)) if image is not None and boxes is None]
        found: list[list[Box] | None] = [None] * len(images)
        if not self.params.detect or not wanted:
            return found
        p = self.params
        detections = nudenet_detections([batch[i].image for i in wanted], [images[i] for i in wanted], p.detect_threshold)
        for i, detected in zip(wanted, detections):
            faces = nms_faces(detected, p.detect_threshold)
            found[i] = [face for face in faces if min(face[2] - face[0], face[3] - face[1]) >= p.min_face_size]
        return found

    def _resize(self) -> ResizeParams:
        return self.context.resize or ResizeParams()

    def _blur_and_encode(self, sample: Sample, image: Image.Image, boxes: list[Box]) -> None:
        p = self.params
        if sample.image_format not in ENCODE_FORMATS:
            sample.fields["face_blur_error"] = f"cannot re-encode image format {sample.image_format!r}"
            return
        blurred = 0
        for box in boxes:
            region = _pixel_region(box, p.expand, image.size)
            if region is not None:
                side = max(box[2] - box[0], box[3] - box[1])
                _blur_region(image, region, max(MIN_BLUR_PIXELS, p.strength * side), p.blur)
                blurred += 1
        if not blurred:
            return
        try:
            encoded = encode_image(image, dataclasses.replace(self._resize(), encode_format=sample.image_format))
        except ImageRejected as err:
            sample.fields["face_blur_error"] = err.reason
            return
        sample.replace_image(encoded)
        sample.fields["faces_blurred"] = blurred


# Where the faces are ---------------------------------------------------------


def parse_boxes(value: Any) -> list[Box] | None:
    """A bbox column value as normalised boxes; None when absent.  Raises BoxError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BoxError(f"not JSON: {value[:60]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise BoxError(f"expected a list of [x0, y0, x1, y1] boxes, got {type(value).__name__}")
    if len(value) > MAX_COLUMN_BOXES:
        raise BoxError(f"{len(value)} boxes, more than {MAX_COLUMN_BOXES}")
    return [_checked_box(index, box) for index, box in enumerate(value)]


def _checked_box(index: int, box: Any) -> Box:
    numbers = isinstance(box, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box
    )
    if not numbers or len(box) != 4:
        raise BoxError(f"box {index} is not [x0, y0, x1, y1] numbers: {str(box)[:60]}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if min(x0, y0, x1, y1) < -COORDINATE_SLACK or max(x0, y0, x1, y1) > 1 + COORDINATE_SLACK:
        raise BoxError(f"box {index} is not normalised to [0, 1]: {list(box)}")
    if x1 <= x0 or y1 <= y0:
        raise BoxError(f"box {index} is empty (needs x0 < x1 and y0 < y1): {list(box)}")
    return (x0, y0, x1, y1)


@dataclass(frozen=True)
class Placement:
    """Where the original image landed in the output: pixel = normalised * scale + offset, per axis."""

    scale: tuple[float, float]  # the original's size once scaled
    offset: tuple[float, float]  # padding minus crop

    @classmethod
    def of(cls, sample: Sample, resize: ResizeParams) -> Placement:
        original = (sample.original_width, sample.original_height)
        output = (sample.width, sample.height)
        if None in original or None in output:
            raise BoxError("the sample's original or output size is unknown")
        if original == output:  # resize mode "no", or resize_only_if_bigger on a small image
            return cls(original, (0.0, 0.0))
        plan = _recipe_plan(original, output, resize)
        scaled = plan.scaled_size or original
        crop = plan.crop_box[:2] if plan.crop_box else (0, 0)
        pad = ((plan.pad_to - scaled[0]) // 2, (plan.pad_to - scaled[1]) // 2) if plan.pad_to else (0, 0)
        return cls(scaled, (pad[0] - crop[0], pad[1] - crop[1]))

    def to_output(self, box: Box) -> Box:
        (sx, sy), (ox, oy) = self.scale, self.offset
        return (box[0] * sx + ox, box[1] * sy + oy, box[2] * sx + ox, box[3] * sy + oy)


def _recipe_plan(original: tuple[int, int], output: tuple[int, int], resize: ResizeParams):
    """pipeline.media.imaging's plan for the recipe's resize; it must turn `original` into `output`."""
    try:
        plan = plan_resize(*original, resize)
    except ImageRejected:
        raise BoxError(_mismatch(original, output, resize)) from None
    if (plan.output_size or original) != output:
        raise BoxError(_mismatch(original, output, resize))
    return plan


def _mismatch(original: tuple[int, int], output: tuple[int, int], resize: ResizeParams) -> str:
    return (
        f"the recipe's resize (resize_mode {resize.resize_mode!r}, image_size {resize.image_size}) cannot turn "
        f"{original[0]}x{original[1]} into {output[0]}x{output[1]}: the image was made with other settings"
    )


def _normalised(box: Box, size: tuple[int, int]) -> list[float]:
    width, height = size
    return [round(box[0] / width, 4), round(box[1] / height, 4), round(box[2] / width, 4), round(box[3] / height, 4)]


def nms_faces(detections: NudeNetDetections, threshold: float) -> list[Box]:
    """The detector's face candidates at or above `threshold`, non-maximum suppressed as NudeNet does."""
    import cv2

    candidates = np.flatnonzero(detections.face_scores >= threshold)
    if not candidates.size:
        return []
    corners = [detections.face_boxes[i] for i in candidates]
    scores = detections.face_scores[candidates].tolist()
    rects = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in corners]
    kept = cv2.dnn.NMSBoxes(rects, scores, threshold, NMS_IOU)
    return [corners[i] for i in np.asarray(kept, dtype=int).reshape(-1)]


# Blurring --------------------------------------------------------------------


def _pixel_region(box: Box, expand: float, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The grown box as whole pixels inside the image (rounded outwards); None if nothing of it is visible."""
    grow = expand * max(box[2] - box[0], box[3] - box[1])
    x0 = max(0, math.floor(box[0] - grow))
    y0 = max(0, math.floor(box[1] - grow))
    x1 = min(size[0], math.ceil(box[2] + grow))
    y1 = min(size[1], math.ceil(box[3] + grow))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _blur_region(image: Image.Image, region: tuple[int, int, int, int], amount: float, method: str) -> None:
    """Blur `region` of `image` in place: a Gaussian of sigma `amount`, or pixel cells of side `amount`."""
    if method == "pixelate":
        patch = image.crop(region)
        cells = (max(1, round(patch.width / amount)), max(1, round(patch.height / amount)))
        coarse = patch.resize(cells, Image.Resampling.BOX)
        image.paste(coarse.resize(patch.size, Image.Resampling.NEAREST), region[:2])
        return
    # Blur with some surroundings so the region's edge mixes with its neighbours, not with itself.
    margin = math.ceil(3 * amount)
    context = (
        max(0, region[0] - margin),
        max(0, region[1] - margin),
        min(image.width, region[2] + margin),
        min(image.height, region[3] + margin),
    )
    blurred = image.crop(context).filter(ImageFilter.GaussianBlur(amount))
    inner = (region[0] - context[0], region[1] - context[1], region[2] - context[0], region[3] - context[1])
    image.paste(blurred.crop(inner), region[:2])
