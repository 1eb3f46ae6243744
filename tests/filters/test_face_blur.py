"""The `face_blur` stage: boxes from a column mapped through every resize mode, detection, re-encoding."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pipeline.models import common as model_common
from filters.face_blur import FaceBlur, parse_boxes
from pipeline.models.common import forget_nudenet_detections
from filters.nsfw import NsfwFilter
from pipeline.media.imaging import ResizeParams, process_image
from pipeline.core.params import ParamError, build
from pipeline.core.registry import get_stage
from pipeline.core.records import KEEP, Sample
from pipeline.core.stage import Mapper, Needs, StageContext

BOX = [0.5, 0.25, 0.75, 0.75]  # normalised to the original 400x200 image: pixels (200, 50)-(300, 150)


def _encode(image: Image.Image, format: str = "png") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[format])
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """A texture every blur changes, pixel by pixel."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _resized_sample(original: Image.Image, boxes, **resize) -> Sample:
    """A sample as the download step leaves it: resized and encoded per `resize`, the column in `extra`."""
    processed = process_image(_encode(original), ResizeParams(**resize))
    extra = {} if boxes is None else {"face_bboxes": boxes}
    return Sample(
        key="000",
        shard_id=0,
        url="http://x/0.png",
        extra=extra,
        image=processed.data,
        image_format=processed.format,
        width=processed.width,
        height=processed.height,
        original_width=processed.original_width,
        original_height=processed.original_height,
    )


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def _changed(before: bytes, after: bytes) -> np.ndarray:
    return (np.abs(_pixels(before) - _pixels(after)).max(axis=2) > 0)


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive ends, of the True pixels."""
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if xs.size else None


def _run(stage: FaceBlur, *samples: Sample) -> None:
    stage.score(list(samples))


@pytest.fixture(scope="module")
def column_only() -> FaceBlur:
    return _stage(detect=False, expand=0.0)


@pytest.fixture(scope="module")
def detecting() -> FaceBlur:
    stage = FaceBlur(FaceBlur.Params(expand=0.0))
    stage.setup()
    return stage


def _stage(resize_mode: str = "border", **params) -> FaceBlur:
    """The stage as a recipe with `resize: {image_size: 128, resize_mode: ...}` builds it."""
    stage = FaceBlur(FaceBlur.Params(**params))
    stage.setup(StageContext(resize=ResizeParams(image_size=128, resize_mode=resize_mode)))
    return stage


def test_registered_as_image_stage_that_never_drops(column_only):
    assert get_stage("face_blur") is FaceBlur
    assert issubclass(FaceBlur, Mapper) and FaceBlur().needs() == Needs(image=True, model=True)
    defaults = FaceBlur.Params()
    assert (defaults.bbox_col, defaults.detect, defaults.blur) == ("face_bboxes", True, "gaussian")
    assert column_only.keep(Sample(key="0", shard_id=0, url="u")) == KEEP


@pytest.mark.parametrize(
    "values",
    [
        {"bbox_col": None, "detect": False},
        {"strength": 0},
        {"expand": -0.1},
        {"detect_threshold": 0},
        {"min_face_size": -1},
        {"blur": "smudge"},
    ],
)
def test_bad_params_are_refused(values):
    with pytest.raises(ParamError):
        build(FaceBlur.Params, values, "face_blur")


# Hand-computed for a 400x200 original and image_size 128, BOX at (200, 50)-(300, 150):
#   no          : unchanged                                      -> (200, 50, 300, 150)
#   keep_ratio  : shorter side to 128, x0.64 -> 256x128           -> (128, 32, 192, 96)
#   center_crop : then the middle 128 columns (crop left 64)      -> (64, 32, 128, 96)
#   border      : longer side to 128, x0.32 -> 128x64, 32 px white above -> (64, 48, 96, 80)
@pytest.mark.parametrize(
    "mode, expected",
    [
        ("no", (200, 50, 300, 150)),
        ("keep_ratio", (128, 32, 192, 96)),
        ("center_crop", (64, 32, 128, 96)),
        ("border", (64, 48, 96, 80)),
    ],
)
def test_column_boxes_land_where_the_resize_put_the_region(mode, expected):
    sample = _resized_sample(_noise(400, 200), [BOX], image_size=128, resize_mode=mode, encode_format="png")
    before = sample.image
    _run(_stage(detect=False, expand=0.0, resize_mode=mode), sample)

    changed = _changed(before, sample.image)
    assert sample.fields["faces_blurred"] == 1
    assert _bounds(changed) == expected  # nothing outside the box changed
    x0, y0, x1, y1 = expected
    assert changed[y0:y1, x0:x1].mean() > 0.95  # and nearly everything inside did


def test_small_image_left_as_is_by_resize_only_if_bigger_maps_one_to_one():
    sample = _resized_sample(
        _noise(100, 50), [BOX], image_size=128, resize_mode="border", resize_only_if_bigger=True, encode_format="png"
    )
    assert (sample.width, sample.height) == (100, 50)
    before = sample.image
    _run(_stage(detect=False, expand=0.0, resize_mode="border"), sample)
    assert _bounds(_changed(before, sample.image)) == (50, 12, 75, 38)  # 12.5 and 37.5 rounded outwards


def test_wrong_resize_mode_is_reported_not_blurred_in_the_wrong_place(column_only):
    sample = _resized_sample(_noise(400, 200), [BOX], image_size=128, resize_mode="keep_ratio", encode_format="png")
    before = sample.image
    _run(column_only, sample)  # column_only's recipe says "border": 400x200 cannot become 256x128 that way
    assert "resize_mode" in sample.fields["face_bbox_error"]
    assert sample.fields["faces_blurred"] == 0
    assert sample.image == before


def test_box_cropped_away_by_center_crop_blurs_nothing():
    sample = _resized_sample(_noise(400, 200), [[0.0, 0.1, 0.2, 0.9]], image_size=128, resize_mode="center_crop",
                             encode_format="png")
    before = sample.image
    _run(_stage(detect=False, expand=0.0, resize_mode="center_crop"), sample)
    assert sample.fields["faces_blurred"] == 0
    assert sample.image == before


def test_expand_grows_the_blurred_region():
    sample = _resized_sample(_noise(400, 200), [BOX], image_size=128, resize_mode="no", encode_format="png")
    before = sample.image
    _run(_stage(detect=False, expand=0.2, resize_mode="no"), sample)
    # The box is 100x100 px: each side moves out by 0.2 * 100.
    assert _bounds(_changed(before, sample.image)) == (180, 30, 320, 170)


def test_json_string_and_list_give_the_same_result():
    def blurred(value) -> bytes:
        sample = _resized_sample(_noise(400, 200), value, image_size=128, resize_mode="border", encode_format="png")
        _run(_stage(detect=False, resize_mode="border"), sample)
        assert sample.fields["faces_blurred"] == 2
        return sample.image

    boxes = [BOX, [0.1, 0.1, 0.2, 0.3]]
    assert blurred(json.dumps(boxes)) == blurred(boxes) == blurred([tuple(b) for b in boxes])


@pytest.mark.parametrize(
    "value, message",
    [
        ("not json", "not JSON"),
        ("{\"x0\": 0.1}", "expected a list"),
        (42, "expected a list"),
        ([0.1, 0.2, 0.3, 0.4], "box 0 is not"),  # one flat box, not a list of boxes
        ([[0.1, 0.2, 0.3]], "box 0 is not"),
        ([BOX, [0.1, 0.2, "a", 0.4]], "box 1 is not"),
        ([[0.1, 0.2, True, 0.4]], "box 0 is not"),
        ("[[0.1, 0.2, NaN, 0.4]]", "box 0 is not"),
        ([[0.5, 0.5, 0.4, 0.6]], "empty"),
        ([[20, 10, 120, 90]], "not normalised"),  # pixels, not fractions
        ([[0.1, 0.1, 0.2, 0.2]] * 300, "more than"),
    ],
)
def test_malformed_column_values_are_reported_and_never_blurred(column_only, value, message):
    sample = _resized_sample(_noise(400, 200), value, image_size=128, resize_mode="border", encode_format="png")
    before = sample.image
    _run(column_only, sample)
    assert message in sample.fields["face_bbox_error"]
    assert sample.fields["faces_blurred"] == 0
    assert sample.image == before


@pytest.mark.parametrize("value", [None, "", "  "])
def test_absent_values_are_not_errors(value):
    assert parse_boxes(value) is None


def test_slightly_out_of_range_boxes_are_accepted_and_clipped():
    assert parse_boxes([[-0.05, 0.0, 1.05, 1.0]]) == [(-0.05, 0.0, 1.05, 1.0)]
    sample = _resized_sample(_noise(400, 200), [[-0.05, -0.05, 0.25, 0.5]], image_size=128, resize_mode="no",
                             encode_format="png")
    before = sample.image
    _run(_stage(detect=False, expand=0.0, resize_mode="no"), sample)
    assert _bounds(_changed(before, sample.image)) == (0, 0, 100, 100)


def test_pixelate_blurs_inside_into_cells_and_leaves_outside_alone():
    sample = _resized_sample(_noise(400, 200), [BOX], image_size=128, resize_mode="no", encode_format="png")
    before = sample.image
    _run(_stage(detect=False, expand=0.0, resize_mode="no", blur="pixelate", strength=0.1), sample)
    assert _bounds(_changed(before, sample.image)) == (200, 50, 300, 150)
    # 10x10 cells of 10 px (0.1 of the 100 px box), each one colour.
    cells = _pixels(sample.image)[50:150, 200:300].reshape(10, 10, 10, 10, 3)  # cell row, y, cell column, x, rgb
    assert (cells == cells[:, :1, :, :1]).all()


@pytest.mark.parametrize("format", ["jpg", "png", "webp"])
def test_blurred_image_is_re_encoded_in_its_own_format(column_only, format):
    sample = _resized_sample(_noise(400, 200), [BOX], image_size=128, resize_mode="border", encode_format=format)
    before = sample.image
    _run(column_only, sample)
    assert sample.fields["faces_blurred"] == 1 and sample.image != before
    with Image.open(io.BytesIO(sample.image)) as image:
        assert image.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[format]
        assert image.size == (sample.width, sample.height) == (128, 128)


def test_unreadable_image_is_kept_with_an_error(column_only):
    sample = Sample(key="0", shard_id=0, url="u", extra={"face_bboxes": [BOX]}, image=b"not an image",
                    image_format="jpg", width=128, height=128, original_width=128, original_height=128)
    _run(column_only, sample)
    assert sample.fields == {"faces_blurred": 0, "face_blur_error": "image_unreadable"}
    assert column_only.keep(sample) == KEEP


# Detection --------------------------------------------------------------------


def _drawn_face(side: int) -> Image.Image:
    """A soft cartoon face (hair, skin, brows, eyes, nose, mouth) on a blue-grey background.

    NudeNet's face classes find it with ~0.75 confidence at this size and blur.
    Returns the image; the face's skin ellipse spans FACE_SKIN scaled by side / 200.
    """
    image = Image.new("RGB", (side, side), (90, 110, 130))
    draw = ImageDraw.Draw(image)
    scale = side / 200

    def ellipse(box, fill):
        draw.ellipse([v * scale for v in box], fill=fill)

    ellipse((30, 10, 170, 110), (40, 30, 25))  # hair
    ellipse(FACE_SKIN, (225, 185, 160))
    for x in (60, 108):  # brows
        draw.rectangle([x * scale, 62 * scale, (x + 32) * scale, 68 * scale], fill=(60, 45, 40))
    for x in (63, 109):  # eyes
        ellipse((x, 78, x + 28, 94), (250, 250, 250))
        ellipse((x + 7, 79, x + 21, 93), (30, 20, 20))
    draw.polygon([(100 * scale, 90 * scale), (92 * scale, 125 * scale), (108 * scale, 125 * scale)], fill=(200, 160, 140))
    ellipse((78, 140, 122, 156), (150, 60, 60))  # mouth
    return image.filter(ImageFilter.GaussianBlur(4 * scale))


FACE_SKIN = (45, 30, 155, 180)


def _face_sample(extra: dict, at: int = 10) -> tuple[Sample, tuple[float, float, float, float]]:
    """A 320x320 png sample with a drawn face at (at, at)-(at + 120, at + 120); also the skin's pixel box."""
    canvas = Image.new("RGB", (320, 320), (90, 110, 130))
    canvas.paste(_drawn_face(120), (at, at))
    skin = tuple(at + v * 120 / 200 for v in FACE_SKIN)
    sample = Sample(key="0", shard_id=0, url="u", extra=extra, image=_encode(canvas), image_format="png",
                    width=320, height=320, original_width=320, original_height=320)
    return sample, skin


def test_detector_finds_a_drawn_face_and_blurs_it(detecting):
    sample, (sx0, sy0, sx1, sy1) = _face_sample({})
    before = sample.image
    _run(detecting, sample)

    (box,) = sample.fields["face_boxes_detected"]
    x0, y0, x1, y1 = (v * 320 for v in box)  # normalised to the 320x320 output image
    assert sx0 <= (x0 + x1) / 2 <= sx1 and sy0 <= (y0 + y1) / 2 <= sy1  # centred on the face
    assert 40 <= x1 - x0 <= 130 and 40 <= y1 - y0 <= 130
    assert sample.fields["faces_blurred"] == 1
    changed = _changed(before, sample.image)
    assert _bounds(changed) == (int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))
    assert not changed[:, 200:].any()  # the right side, away from the face, is untouched


def test_detector_runs_offline_and_finds_nothing_in_faceless_images(detecting):
    blank = Image.new("RGB", (256, 256), (255, 255, 255))
    samples = [
        Sample(key=str(i), shard_id=0, url="u", image=_encode(image), image_format="png", width=256, height=256,
               original_width=256, original_height=256)
        for i, image in enumerate([blank, _noise(256, 256)])
    ]
    before = [s.image for s in samples]
    _run(detecting, *samples)
    for sample, data in zip(samples, before):
        assert sample.fields == {"faces_blurred": 0, "face_boxes_detected": []}
        assert sample.image == data


def test_min_face_size_drops_small_detections():
    sample, _skin = _face_sample({})
    _run(_stage(min_face_size=200), sample)
    assert sample.fields == {"faces_blurred": 0, "face_boxes_detected": []}


def test_column_decides_over_the_detector_in_one_mixed_batch(detecting):
    told_no_faces, _ = _face_sample({"face_bboxes": []})  # an empty list means "no faces": no detection
    told_a_box, _ = _face_sample({"face_bboxes": [[0.7, 0.7, 0.9, 0.9]]})
    malformed, _ = _face_sample({"face_bboxes": "oops"})  # unusable column: the detector takes over
    missing, _ = _face_sample({})
    _run(detecting, told_no_faces, told_a_box, malformed, missing)

    assert told_no_faces.fields == {"faces_blurred": 0}
    assert told_a_box.fields == {"faces_blurred": 1}
    assert malformed.fields["face_bbox_error"].startswith("not JSON")
    for sample in (malformed, missing):
        assert sample.fields["faces_blurred"] == 1 and len(sample.fields["face_boxes_detected"]) == 1


# One detector run for nsfw and face_blur ---------------------------------------


@pytest.fixture
def detector_runs(monkeypatch) -> list[int]:
    """Images per run of the shared NudeNet detector, counted from an empty memory of past results."""
    forget_nudenet_detections()
    runs: list[int] = []
    original = model_common.run_nudenet

    def counting(images, face_floor, side=model_common.NUDENET_INPUT_SIDE):
        runs.append(len(images))
        return original(images, face_floor, side)

    monkeypatch.setattr(model_common, "run_nudenet", counting)
    return runs


def _mixed_batch() -> list[Sample]:
    """Two faces to detect, a faceless image, and a face the column gives (face_blur detects nothing there)."""
    faceless = Sample(key="2", shard_id=0, url="u", image=_encode(_noise(256, 256)), image_format="png", width=256,
                      height=256, original_width=256, original_height=256)
    return [_face_sample({})[0], _face_sample({}, at=150)[0], faceless, _face_sample({"face_bboxes": [BOX]})[0]]


def _nudenet_stages(detect_threshold: float = 0.25) -> tuple[NsfwFilter, FaceBlur]:
    nsfw, blur = NsfwFilter(), FaceBlur(FaceBlur.Params(detect_threshold=detect_threshold))
    nsfw.setup()
    blur.setup()
    return nsfw, blur


def _blur_results(samples: list[Sample]) -> list[tuple[bytes, dict]]:
    return [(s.image, {k: v for k, v in s.fields.items() if k != "nsfw_score"}) for s in samples]


# Below NudeNet's 0.2 cut, nsfw's run kept too few face candidates: face_blur runs
# again on the three images it detects on.
@pytest.mark.parametrize("detect_threshold, face_blur_runs", [(0.25, 0), (0.1, 3)])
def test_after_nsfw_face_blur_reuses_its_detections_with_the_same_results(
    detector_runs, detect_threshold, face_blur_runs
):
    nsfw, blur = _nudenet_stages(detect_threshold)
    both = _mixed_batch()
    nsfw.score(both)
    assert sum(detector_runs) == len(both)
    blur.score(both)
    assert sum(detector_runs) == len(both) + face_blur_runs

    forget_nudenet_detections()
    nsfw_alone, blur_alone = _mixed_batch(), _mixed_batch()
    nsfw.score(nsfw_alone)
    forget_nudenet_detections()
    blur.score(blur_alone)
    assert sum(detector_runs) == 2 * len(both) + face_blur_runs + 3  # each alone ran the detector itself

    assert [s.fields["faces_blurred"] for s in both] == [1, 1, 0, 1]  # real blurring to compare
    assert _blur_results(both) == _blur_results(blur_alone)
    assert [s.fields["nsfw_score"] for s in both] == [s.fields["nsfw_score"] for s in nsfw_alone]


def test_before_nsfw_blurred_images_are_detected_again_and_unchanged_ones_reused(detector_runs):
    nsfw, blur = _nudenet_stages()
    both = _mixed_batch()
    blur.score(both)
    assert sum(detector_runs) == 3  # the column speaks for the last image
    nsfw.score(both)
    assert sum(detector_runs) == 3 + 3  # the three blurred images are new bytes; the faceless one is reused

    forget_nudenet_detections()  # nsfw alone on face_blur's output gives the same scores
    nsfw_alone = [Sample(key=s.key, shard_id=0, url="u", image=s.image) for s in both]
    nsfw.score(nsfw_alone)
    assert [s.fields["nsfw_score"] for s in both] == [s.fields["nsfw_score"] for s in nsfw_alone]


def test_a_face_below_nudenets_cut_is_still_found_after_nsfw(detector_runs):
    """nsfw's run keeps face candidates down to 0.2; a lower detect_threshold runs the detector again."""
    background = Image.new("RGB", (320, 320), (90, 110, 130))
    faint = background.copy()
    faint.paste(Image.blend(background.crop((0, 0, 120, 120)), _drawn_face(120), 0.14), (10, 10))  # ~0.16
    sample = Sample(key="0", shard_id=0, url="u", image=_encode(faint), image_format="png", width=320, height=320,
                    original_width=320, original_height=320)
    nsfw, blur = _nudenet_stages(detect_threshold=0.1)
    nsfw.score([sample])
    blur.score([sample])
    assert sample.fields["faces_blurred"] == 1
    assert detector_runs == [1, 1]
