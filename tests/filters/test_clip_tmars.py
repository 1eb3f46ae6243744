"""clip_score's `mask_text` (T-MARS): text regions found by the OCR detector masked before scoring."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from filters.clip_score import ClipScore
from pipeline.models.text_regions import TextDetector, mask_regions, ring_width
from pipeline.core.params import ParamError, build
from pipeline.core.records import Sample

BACKGROUNDS = [(40, 120, 200), (200, 180, 60), (90, 90, 90), (30, 140, 70)]
TEXTS = ["SALE 50%", "hello world", "CAT", "www.shop"]
WHITE = (255, 255, 255)


def text_overlay(index: int) -> Image.Image:
    """A flat picture (background and a red disc) with large white text over its top."""
    image = Image.new("RGB", (256, 192), BACKGROUNDS[index])
    draw = ImageDraw.Draw(image)
    draw.ellipse((150, 110, 240, 185), fill=(200, 40, 40))
    draw.text((12, 20), TEXTS[index], font=ImageFont.load_default(size=40), fill=WHITE)
    return image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample(index: int, image: Image.Image, caption: str | None = "a shop sign") -> Sample:
    return Sample(key=f"{index:09d}", shard_id=0, url=f"http://example.invalid/{index}.png", caption=caption,
                  image=png(image))


def make_stage(tiny_clip, **values) -> ClipScore:
    params = build(ClipScore.Params, {"model": tiny_clip.model, "pretrained": tiny_clip.pretrained,
                                      "model_config": tiny_clip.model_config, "threshold": None, **values},
                   "clip_score")
    stage = ClipScore(params)
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def detector() -> TextDetector:
    return TextDetector()


def polygon_pixels(size: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """The region's pixels drawn by PIL (not the cv2 fill the mask uses)."""
    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).polygon([tuple(point) for point in polygon.tolist()], fill=1, outline=1)
    return np.asarray(canvas).astype(bool)


def grown(mask: np.ndarray, by: int) -> np.ndarray:
    """`mask` grown by `by` pixels in every direction (a square neighbourhood)."""
    result = mask.copy()
    for dy in range(-by, by + 1):
        for dx in range(-by, by + 1):
            result |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return result


def test_each_region_gets_the_mean_colour_of_the_ring_around_it():
    pixels = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    width = ring_width(image)
    first = np.array([[10, 10], [40, 10], [40, 30], [10, 30]])
    second = np.array([[40 + width, 12], [70, 12], [70, 28], [40 + width, 28]])  # inside first's ring
    masked = np.asarray(mask_regions(image, [first, second]))

    covered = np.zeros(pixels.shape[:2], bool)
    covered[10:31, 10:41] = covered[12:29, 40 + width:71] = True
    ring = np.zeros(pixels.shape[:2], bool)
    ring[10 - width:31 + width, 10 - width:41 + width] = True
    ring &= ~covered  # the second region's pixels are not part of the first's surroundings
    expected = np.round(pixels[ring].mean(axis=0)).astype(np.uint8)
    assert (masked[10:31, 10:41] == expected).all()
    assert (masked[12:29, 40 + width:71] != pixels[12:29, 40 + width:71]).any()
    assert (masked[~covered] == pixels[~covered]).all()


def test_mask_covers_the_ocr_boxes_and_removes_the_text(detector):
    for index in range(len(TEXTS)):
        image = text_overlay(index)
        polygons, _ = detector.regions(image)
        assert polygons, f"the detector found no text in {TEXTS[index]!r}"
        original, masked = np.asarray(image), np.asarray(mask_regions(image, polygons))
        boxes = np.logical_or.reduce([polygon_pixels(image.size, polygon) for polygon in polygons])
        inside = ~grown(~boxes, 1)  # one pixel in from the outline: the two rasterisations may differ there
        outside = ~grown(boxes, 1)
        assert (masked[outside] == original[outside]).all()
        fills = {tuple(colour) for colour in masked[inside]}
        assert len(fills) == len(polygons)  # one flat colour per box
        for colour in fills:  # the surroundings are the background
            assert np.abs(np.array(colour, int) - BACKGROUNDS[index]).max() <= 12
        text = (original == WHITE).all(axis=2)
        assert text.sum() > 200 and not (masked == WHITE).all(axis=2).any()  # every letter pixel is gone


def test_masked_score_differs_on_text_and_equals_the_plain_one_without(tiny_clip, detector):
    stage = make_stage(tiny_clip, mask_text=True)
    with_text = [sample(i, text_overlay(i)) for i in range(len(TEXTS))]
    plain = sample(9, Image.new("RGB", (256, 192), (40, 120, 200)))
    stage.score([*with_text, plain])
    for index, scored in enumerate(with_text):
        fields = scored.fields
        assert fields["clip_text_regions"] >= 1
        assert abs(fields["clip_score_masked"] - fields["clip_score"]) > 1e-4
        image = text_overlay(index)
        masked_image = mask_regions(image, detector.regions(image)[0])
        embedding = stage.encoder.encode_images([masked_image])[0]
        text_embedding = stage.encoder.encode_texts(["a shop sign"])[0]
        assert fields["clip_score_masked"] == pytest.approx(float(embedding @ text_embedding), abs=1e-5)
    assert plain.fields["clip_text_regions"] == 0
    assert plain.fields["clip_score_masked"] == plain.fields["clip_score"]


def test_off_by_default(tiny_clip):
    scored = sample(0, text_overlay(0))
    make_stage(tiny_clip).score([scored])
    assert "clip_score_masked" not in scored.fields and "clip_text_regions" not in scored.fields


def test_threshold_on_the_masked_score(tiny_clip):
    samples = [sample(i, text_overlay(i)) for i in range(len(TEXTS))] + [sample(8, text_overlay(0), caption=None)]
    make_stage(tiny_clip, mask_text=True).score(samples)
    masked = sorted(s.fields["clip_score_masked"] for s in samples[:-1])
    cut = (masked[1] + masked[2]) / 2
    stage = ClipScore(ClipScore.Params(mask_text=True, threshold=cut, threshold_on="clip_score_masked"))
    verdicts = [stage.keep(s) for s in samples]
    assert [v.keep for v in verdicts[:-1]] == [s.fields["clip_score_masked"] >= cut for s in samples[:-1]]
    assert {v.reason for v in verdicts[:-1] if not v.keep} == {"low_clip_score_masked"}
    assert samples[-1].fields["clip_score_masked"] is None and verdicts[-1].reason == "no_caption"


def test_threshold_on_the_masked_score_needs_mask_text():
    with pytest.raises(ParamError, match="needs clip_score.mask_text"):
        build(ClipScore.Params, {"threshold_on": "clip_score_masked"}, "clip_score")
    with pytest.raises(ParamError, match="multiple of 32"):
        build(ClipScore.Params, {"mask_text": True, "text_detector_side": 500}, "clip_score")


def test_shares_the_watermark_stages_detector_session(tiny_clip):
    from filters.watermark import WatermarkFilter

    watermark = WatermarkFilter()
    watermark.setup()
    assert make_stage(tiny_clip, mask_text=True)._text_detector._session is watermark._scorer._detector._session
