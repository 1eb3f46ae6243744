"""Text regions in an image, found by RapidOCR's text detector, and masked.

Shared by the `watermark` stage (it scores the regions) and `clip_score`
with `mask_text` (T-MARS: it masks them before scoring).

The detector is the PP-OCRv4 text *detector* (`ch_PP-OCRv4_det_infer.onnx`,
4.7 MB) shipped inside `rapidocr-onnxruntime`, run with onnxruntime on one
thread (pipeline.models.common.onnx_session); only the detector, not the
recogniser.  Preprocessing is rapidocr's (RGB, (x/255 - 0.5)/0.5, sides
multiples of 32) except the size: the longer side is scaled to `side`
(default 512) to bound the cost.  Regions come from rapidocr's own DB
post-processing (`DBPostProcess`, its default thresholds) as quadrilaterals
in the image's own pixels.

`mask_regions` (T-MARS, Maini et al. 2023) fills each region with the mean
colour of a thin ring of pixels around it, so the text is gone but the
image's colours stay: the ring is `ring_width(image)` pixels wide (1 % of the
shorter side, at least 2) and leaves out the pixels of every region, so one
region's letters do not colour another's fill.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.models.common import packaged_file, shared_onnx_session
from pipeline.core.params import ParamError

DETECTOR_FILE = ("models", "ch_PP-OCRv4_det_infer.onnx")
DEFAULT_SIDE = 512


def detector_file() -> Path:
    """The detector model inside the installed rapidocr-onnxruntime package (never downloaded)."""
    return packaged_file("rapidocr_onnxruntime", *DETECTOR_FILE)


def check_side(side: int, where: str) -> None:
    """The detector takes sides that are multiples of 32."""
    if side < 32 or side % 32:
        raise ParamError(f"{where} must be a multiple of 32, got {side}")


class TextDetector:
    """Text regions of RGB images, one image at a time (at its own aspect ratio, nothing padded)."""

    def __init__(self, model_path: Path | None = None, side: int = DEFAULT_SIDE):
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        self._session = shared_onnx_session(model_path or detector_file())
        self._input_name = self._session.get_inputs()[0].name
        self._side = side
        # rapidocr's defaults (its config.yaml), so regions match what RapidOCR finds.
        self._postprocess = DBPostProcess(
            thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6, score_mode="fast", use_dilation=True
        )

    def regions(self, image: Image.Image) -> tuple[list[np.ndarray], list[float]]:
        """(quadrilaterals as (4, 2) int arrays of x, y in the image's pixels, their DB confidences)."""
        (probability_map,) = self._session.run(None, {self._input_name: self._detector_input(image)})
        return self.regions_from_map(probability_map, image)

    def regions_from_map(self, probability_map: np.ndarray, image: Image.Image) -> tuple[list[np.ndarray], list[float]]:
        """The post-processing alone: DB regions from the detector's output (benchmarks time it apart)."""
        polygons, confidences = self._postprocess(probability_map, (image.height, image.width))
        return list(polygons), [float(confidence) for confidence in confidences]

    def _detector_input(self, image: Image.Image) -> np.ndarray:
        scale = self._side / max(image.size)
        width, height = (max(32, round(side * scale / 32) * 32) for side in image.size)
        pixels = np.asarray(image.resize((width, height), resample=Image.Resampling.BILINEAR), np.float32)
        return ((pixels / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]


def ring_width(image: Image.Image) -> int:
    return max(2, round(min(image.size) / 100))


def region_mask(size: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """Boolean (height, width) mask of the pixels a region covers, its outline included."""
    import cv2

    mask = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillPoly(mask, [np.asarray(polygon, np.int32).reshape(-1, 1, 2)], 1)
    return mask.astype(bool)


def mask_regions(image: Image.Image, polygons: list[np.ndarray]) -> Image.Image:
    """An RGB copy of `image` with each region filled with the mean colour of the ring around it."""
    import cv2

    pixels = np.asarray(image.convert("RGB"))
    if not polygons:
        return Image.fromarray(pixels.copy())
    masks = [region_mask(image.size, polygon) for polygon in polygons]
    covered = np.logical_or.reduce(masks)
    width = ring_width(image)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    masked = pixels.copy()
    for mask in masks:
        ring = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~covered
        masked[mask] = _mean_colour(pixels, ring if ring.any() else ~covered)
    return Image.fromarray(masked)


def _mean_colour(pixels: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The rounded mean colour of `pixels` at `where`; of the whole image when `where` is empty
    (regions covering everything)."""
    chosen = pixels[where] if where.any() else pixels.reshape(-1, 3)
    return np.round(chosen.mean(axis=0)).astype(np.uint8)
