"""Decode + resize: sizes per mode, colour modes, orientation, bad input, encoding.

All images are generated here with Pillow; no binary fixtures.
"""
from __future__ import annotations

import io
import random
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from pipeline.core import params as params_module
from pipeline.media.imaging import ImageRejected, ProcessedImage, ResizeParams, _process_image, process_image
from pipeline.core.params import ParamError

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

LANDSCAPE = (640, 480)
PORTRAIT = (480, 640)
SQUARE = (500, 500)


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth RGB image with some texture, deterministic per seed."""
    (width, height) = size
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 8, (height, width, 3))
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 255 / (width + height)], -1)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def decode(processed: ProcessedImage) -> Image.Image:
    img = Image.open(io.BytesIO(processed.data))
    img.load()
    return img


def rejection(data: bytes, params: ResizeParams = ResizeParams()) -> str:
    with pytest.raises(ImageRejected) as caught:
        process_image(data, params)
    return caught.value.reason


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )


# --- sizes -----------------------------------------------------------------

EXPECTED_SIZES = {
    # (mode, input size) -> output size, image_size=256
    ("no", LANDSCAPE): LANDSCAPE,
    ("no", PORTRAIT): PORTRAIT,
    ("no", SQUARE): SQUARE,
    ("keep_ratio", LANDSCAPE): (341, 256),
    ("keep_ratio", PORTRAIT): (256, 341),
    ("keep_ratio", SQUARE): (256, 256),
    ("center_crop", LANDSCAPE): (256, 256),
    ("center_crop", PORTRAIT): (256, 256),
    ("center_crop", SQUARE): (256, 256),
    ("border", LANDSCAPE): (256, 256),
    ("border", PORTRAIT): (256, 256),
    ("border", SQUARE): (256, 256),
}


@pytest.mark.parametrize(("mode", "size"), list(EXPECTED_SIZES))
def test_output_size_per_mode(mode, size):
    result = process_image(encode(photo(size)), ResizeParams(resize_mode=mode))
    assert (result.width, result.height) == EXPECTED_SIZES[(mode, size)]
    assert decode(result).size == EXPECTED_SIZES[(mode, size)]
    assert (result.original_width, result.original_height) == size


def test_border_pads_with_white_centred():
    result = process_image(encode(photo(LANDSCAPE), "PNG"), ResizeParams(resize_mode="border", encode_format="png"))
    img = decode(result)
    # 640x480 -> 256x192, so 32 rows of padding above and below.
    assert img.getpixel((128, 0)) == WHITE and img.getpixel((128, 31)) == WHITE
    assert img.getpixel((128, 255)) == WHITE and img.getpixel((128, 224)) == WHITE
    assert img.getpixel((128, 40)) != WHITE and img.getpixel((128, 215)) != WHITE


def test_center_crop_keeps_the_middle():
    # Left third red, middle blue, right third red: the square crop is all blue.
    stripes = Image.new("RGB", (900, 300), RED)
    stripes.paste(BLUE, (300, 0, 600, 300))
    result = process_image(encode(stripes, "PNG"), ResizeParams(resize_mode="center_crop", image_size=100, encode_format="png"))
    img = decode(result)
    assert img.size == (100, 100)
    for x in (1, 50, 98):
        assert img.getpixel((x, 50)) == BLUE


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_small_images_are_enlarged_unless_resize_only_if_bigger(mode):
    small = encode(photo((200, 100)))
    enlarged = process_image(small, ResizeParams(resize_mode=mode))
    assert max(enlarged.width, enlarged.height) >= 256
    kept = process_image(small, ResizeParams(resize_mode=mode, resize_only_if_bigger=True))
    # img2dataset neither resizes nor pads/crops then, even for border.
    assert (kept.width, kept.height) == (200, 100)


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_resize_only_if_bigger_still_shrinks_big_images(mode):
    result = process_image(encode(photo(LANDSCAPE)), ResizeParams(resize_mode=mode, resize_only_if_bigger=True))
    assert (result.width, result.height) == EXPECTED_SIZES[(mode, LANDSCAPE)]


@pytest.mark.parametrize(
    ("size", "mode", "only_if_bigger"),
    [
        ((640, 480), "keep_ratio", False),
        ((1001, 333), "keep_ratio", False),
        ((333, 1001), "center_crop", False),
        ((1001, 333), "border", False),
        ((100, 50), "keep_ratio", False),
        ((100, 50), "border", False),
        ((100, 50), "border", True),
        ((300, 257), "center_crop", True),
        ((257, 300), "keep_ratio", True),
        ((777, 555), "no", False),
        ((255, 255), "border", False),
    ],
)
def test_sizes_match_img2dataset(img2dataset_resizer, size, mode, only_if_bigger):
    data = encode(photo(size), "PNG")
    theirs = img2dataset_resizer(image_size=256, resize_mode=mode, resize_only_if_bigger=only_if_bigger, encode_format="png", encode_quality=1)(io.BytesIO(data))
    (_, their_width, their_height, their_original_width, their_original_height, error) = theirs
    assert error is None
    ours = process_image(data, ResizeParams(resize_mode=mode, resize_only_if_bigger=only_if_bigger, encode_format="png"))
    assert (ours.width, ours.height, ours.original_width, ours.original_height) == (
        their_width,
        their_height,
        their_original_width,
        their_original_height,
    )


def test_pixels_close_to_img2dataset_for_border(img2dataset_resizer):
    data = encode(photo((600, 400)), "PNG")
    (their_bytes, *_rest, error) = img2dataset_resizer(image_size=256, resize_mode="border", resize_only_if_bigger=False, encode_format="png", encode_quality=1)(io.BytesIO(data))
    assert error is None
    theirs = np.asarray(Image.open(io.BytesIO(their_bytes)).convert("RGB"), dtype=float)
    ours = np.asarray(decode(process_image(data, ResizeParams(resize_mode="border", encode_format="png"))), dtype=float)
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).mean() < 3.0  # different filters, same geometry and padding


@pytest.fixture(scope="module")
def img2dataset_resizer():
    with pytest.MonkeyPatch.context() as patch:
        # albumentations otherwise asks PyPI for a newer version on import.
        patch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
        resizer = pytest.importorskip("img2dataset.resizer")
    return resizer.Resizer


def test_output_too_large_for_extreme_aspect_ratio():
    # keep_ratio of a 5000x2 strip would be 640000x256.
    assert rejection(encode(photo((5000, 2)), "PNG"), ResizeParams(resize_mode="keep_ratio")) == "output_too_large"


# --- draft decode ----------------------------------------------------------


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.mean((np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) ** 2)
    return 10 * np.log10(255**2 / error)


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_draft_decode_matches_full_decode(mode):
    data = encode(photo((1600, 1200)), quality=95)
    params = ResizeParams(resize_mode=mode, encode_format="png")
    drafted = _process_image(data, params, use_draft=True)
    full = _process_image(data, params, use_draft=False)
    assert (drafted.width, drafted.height) == (full.width, full.height)
    assert (drafted.original_width, drafted.original_height) == (1600, 1200)
    assert psnr(decode(drafted), decode(full)) > 35


def test_draft_decode_is_used_for_jpeg(monkeypatch):
    requested = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):
        requested.append(size)
        return original_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    process_image(encode(photo((1600, 1200))), ResizeParams(resize_mode="keep_ratio"))
    assert requested == [(341, 256)]


# --- orientation and colour modes -----------------------------------------


def test_exif_orientation_6_swaps_dimensions_and_rotates():
    stored = Image.new("RGB", (400, 200), BLUE)
    stored.paste(RED, (0, 0, 40, 40))  # marker at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    data = encode(stored, exif=exif.tobytes())
    result = process_image(data, ResizeParams(resize_mode="no"))
    assert (result.original_width, result.original_height) == (200, 400)
    assert (result.width, result.height) == (200, 400)
    img = decode(result)
    # Rotating clockwise moves the top-left corner to the top-right.
    assert _near(img.getpixel((190, 10)), RED) and _near(img.getpixel((10, 10)), BLUE)
    # Downscaled: drafted in stored orientation, then rotated.
    resized = process_image(data, ResizeParams(resize_mode="keep_ratio", image_size=100))
    assert (resized.width, resized.height) == (100, 200)
    assert _near(decode(resized).getpixel((95, 5)), RED) and _near(decode(resized).getpixel((5, 5)), BLUE)


def _near(pixel, colour, tolerance=40) -> bool:
    return all(abs(p - c) <= tolerance for p, c in zip(pixel, colour))


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (300, 300), (0, 255, 255, 0))  # red in CMYK
    result = process_image(encode(cmyk), ResizeParams(resize_mode="keep_ratio"))
    img = decode(result)
    assert img.mode == "RGB"
    assert _near(img.getpixel((128, 128)), RED)


def test_palette_png_with_transparency_becomes_white():
    palette_img = Image.new("P", (300, 300), 0)
    palette_img.putpalette([*RED, *BLUE] + [0] * (254 * 3))
    palette_img.paste(1, (150, 0, 300, 300))
    data = encode(palette_img, "PNG", transparency=0)  # index 0 (red) is transparent
    img = decode(process_image(data, ResizeParams(resize_mode="no", encode_format="png")))
    assert img.mode == "RGB"
    assert img.getpixel((10, 10)) == WHITE
    assert img.getpixel((290, 10)) == BLUE


def test_rgba_is_composited_onto_white():
    rgba = Image.new("RGBA", (200, 200), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (100, 0, 200, 200))
    rgba.paste((0, 0, 0, 128), (0, 100, 100, 200))
    img = decode(process_image(encode(rgba, "PNG"), ResizeParams(resize_mode="no", encode_format="png")))
    assert img.mode == "RGB"
    assert img.getpixel((10, 10)) == WHITE  # fully transparent red
    assert img.getpixel((150, 10)) == BLUE  # opaque
    assert _near(img.getpixel((10, 150)), (127, 127, 127), tolerance=2)  # half-transparent black


def test_sixteen_bit_grey_png_is_scaled_not_clipped():
    values = np.tile(np.array([0, 0x4000, 0x8000, 0xFFFF], dtype=np.uint16).repeat(50), (50, 1))
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = decode(process_image(data, ResizeParams(resize_mode="no", encode_format="png")))
    assert img.mode == "RGB"
    assert [img.getpixel((x, 25))[0] for x in (25, 75, 125, 175)] == [0, 64, 128, 255]


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_and_bilevel_become_rgb(mode):
    grey = Image.new(mode, (300, 200), 255)
    img = decode(process_image(encode(grey, "PNG"), ResizeParams(resize_mode="keep_ratio", encode_format="png")))
    assert img.mode == "RGB" and img.size == (384, 256)
    assert img.getpixel((10, 10)) == WHITE


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (100, 100), colour) for colour in (RED, BLUE)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100)
    img = decode(process_image(out.getvalue(), ResizeParams(resize_mode="no", encode_format="png")))
    assert _near(img.getpixel((50, 50)), RED, tolerance=5)


# --- bad input -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_truncated_file_is_rejected(fmt):
    data = encode(photo((400, 300)), fmt)
    assert rejection(data[: len(data) // 2]) == "truncated_image"


@pytest.mark.parametrize("data", [b"", b"hello", bytes(random.Random(0).randbytes(5000)), b"\xff\xd8\xff" + b"\x00" * 100])
def test_garbage_is_a_decode_error(data):
    assert rejection(data) == "decode_error"


def test_decompression_bomb_rejected_from_header_without_decoding():
    start = time.perf_counter()
    assert rejection(png_claiming(100_000, 100_000)) == "decompression_bomb"
    assert time.perf_counter() - start < 1.0


def test_max_pixels_is_checked_before_decoding():
    # 9000x9000 is under Pillow's own limit; its pixel data is missing, so a
    # decode would report truncation rather than the size.
    params = ResizeParams(max_pixels=10_000_000)
    assert rejection(png_claiming(9000, 9000), params) == "decompression_bomb"
    assert rejection(png_claiming(3000, 3000), params) == "truncated_image"


def test_max_pixels_applies_to_real_images():
    data = encode(photo((200, 200)))
    assert rejection(data, ResizeParams(resize_mode="no", max_pixels=39_999)) == "decompression_bomb"
    assert process_image(data, ResizeParams(resize_mode="no", max_pixels=40_000)).original_width == 200


def test_webp_side_limit_is_an_encode_error():
    data = encode(Image.new("RGB", (17_000, 4)), "PNG")
    assert rejection(data, ResizeParams(resize_mode="no", encode_format="webp")) == "encode_error"


@pytest.mark.filterwarnings("ignore:Truncated File Read")  # Pillow's TIFF reader warns, then raises
def test_corrupted_images_only_ever_raise_image_rejected():
    rng = random.Random(1)
    sources = [
        encode(photo((64, 48)), fmt)
        for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
    ]
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(300):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        try:
            process_image(bytes(data), ResizeParams(image_size=32))
            outcomes["ok"] += 1
        except ImageRejected as err:
            assert err.reason.isidentifier() and err.reason.islower()
            outcomes["rejected"] += 1
    assert outcomes["ok"] > 0 and outcomes["rejected"] > 0


# --- encoding --------------------------------------------------------------

MAGIC = {"jpg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n", "webp": b"RIFF"}


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_encode_format_magic_bytes(fmt):
    result = process_image(encode(photo(LANDSCAPE)), ResizeParams(encode_format=fmt))
    assert result.format == fmt
    assert result.data.startswith(MAGIC[fmt])
    if fmt == "webp":
        assert result.data[8:12] == b"WEBP"


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_output_is_deterministic(fmt):
    data = encode(photo((800, 600)))
    params = ResizeParams(resize_mode="center_crop", encode_format=fmt)
    assert process_image(data, params).data == process_image(data, params).data


def test_encode_quality_changes_jpeg_size():
    data = encode(photo(LANDSCAPE))
    high = process_image(data, ResizeParams(encode_quality=95))
    low = process_image(data, ResizeParams(encode_quality=30))
    assert len(low.data) < len(high.data)


@pytest.mark.parametrize(
    ("source_fmt", "params"),
    [
        ("JPEG", ResizeParams(resize_mode="no", skip_reencode=True)),
        ("PNG", ResizeParams(resize_mode="no", encode_format="png", skip_reencode=True)),
        ("WEBP", ResizeParams(resize_mode="no", encode_format="webp", skip_reencode=True)),
        ("JPEG", ResizeParams(resize_mode="border", image_size=256, resize_only_if_bigger=True, skip_reencode=True)),
        ("JPEG", ResizeParams(resize_mode="keep_ratio", image_size=200, skip_reencode=True)),  # already 200 high
    ],
)
def test_skip_reencode_returns_original_bytes(source_fmt, params):
    data = encode(photo((250, 200)), source_fmt)
    result = process_image(data, params)
    assert result.data == data
    assert (result.width, result.height) == (250, 200)


@pytest.mark.parametrize(
    ("data", "params"),
    [
        # format differs
        (encode(photo((250, 200)), "PNG"), ResizeParams(resize_mode="no", skip_reencode=True)),
        # a resize happens
        (encode(photo((250, 200))), ResizeParams(resize_mode="keep_ratio", skip_reencode=True)),
        # alpha must be flattened
        (encode(Image.new("RGBA", (50, 50), (1, 2, 3, 4)), "PNG"), ResizeParams(resize_mode="no", encode_format="png", skip_reencode=True)),
    ],
)
def test_skip_reencode_reencodes_when_needed(data, params):
    result = process_image(data, params)
    assert result.data != data
    assert decode(result).mode == "RGB"


def test_skip_reencode_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo((250, 200)), exif=exif.tobytes())
    result = process_image(data, ResizeParams(resize_mode="no", skip_reencode=True))
    assert result.data != data
    assert (result.width, result.height) == decode(result).size == (200, 250)


def test_skip_reencode_still_rejects_truncated_files():
    data = encode(photo((400, 300)))
    params = ResizeParams(resize_mode="no", skip_reencode=True)
    assert rejection(data[: len(data) // 2], params) == "truncated_image"


# --- parameters ------------------------------------------------------------


def test_params_from_recipe_values():
    built = params_module.build(
        ResizeParams, {"image_size": "384", "resize_mode": "center_crop", "encode_format": "webp"}, "resize"
    )
    assert built == ResizeParams(image_size=384, resize_mode="center_crop", encode_format="webp")
    with pytest.raises(ParamError):
        params_module.build(ResizeParams, {"resize_mode": "keep_ratio_largest"}, "resize")


@pytest.mark.parametrize("values", [{"image_size": 0}, {"encode_quality": 101}, {"max_pixels": 0}])
def test_params_out_of_range(values):
    with pytest.raises(ParamError):
        ResizeParams(**values)


def test_png_compression_level_follows_small_quality():
    data = encode(photo(LANDSCAPE))
    stored = process_image(data, ResizeParams(encode_format="png", encode_quality=0))
    compressed = process_image(data, ResizeParams(encode_format="png", encode_quality=9))
    assert len(compressed.data) < len(stored.data)
    assert decode(stored).tobytes() == decode(compressed).tobytes()
