"""Every odd image mode either decodes to the right RGB picture or is rejected with a documented reason."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image, ImageCms

from pipeline.media.imaging import ImageRejected, ResizeParams, process_image

AS_IS = ResizeParams(resize_mode="no", encode_format="png")
RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
RAMP = np.tile(np.linspace(0, 1, 64), (32, 1))  # left edge 0, right edge 1


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def corners(data: bytes, params: ResizeParams = AS_IS) -> tuple[tuple, tuple, tuple[int, int]]:
    """(top-left pixel, bottom-right pixel, size) of the processed output."""
    result = process_image(data, params)
    img = Image.open(io.BytesIO(result.data))
    assert img.mode == "RGB"
    return img.getpixel((0, 0)), img.getpixel((img.width - 1, img.height - 1)), img.size


def near(pixel, colour, tolerance=3) -> bool:
    return all(abs(p - c) <= tolerance for p, c in zip(pixel, colour))


def two_frames(fmt: str, **options) -> bytes:
    first, second = Image.new("RGB", (64, 32), RED), Image.new("RGB", (64, 32), BLUE)
    return encode(first, fmt, save_all=True, append_images=[second], duration=100, **options)


SAMPLES = {
    # name -> (encoded image, expected top-left, expected bottom-right)
    "CMYK JPEG": (encode(Image.new("CMYK", (64, 32), (0, 255, 255, 0)), "JPEG"), RED, RED),
    "CMYK TIFF": (encode(Image.new("CMYK", (64, 32), (0, 255, 255, 0)), "TIFF"), RED, RED),
    "LA PNG": (encode(Image.fromarray(np.dstack([np.zeros((32, 64), np.uint8),
                                                  np.where(RAMP > 0.5, 255, 0).astype(np.uint8)]), "LA"), "PNG"),
               WHITE, BLACK),
    "I;16 PNG": (encode(Image.fromarray((RAMP * 65535).astype(np.uint16)), "PNG"), BLACK, WHITE),
    "I;16B TIFF": (encode(Image.fromarray((RAMP * 65535).astype(">u2")), "TIFF"), BLACK, WHITE),
    "I (32-bit) TIFF": (encode(Image.fromarray((RAMP * 65535).astype(np.int32), "I"), "TIFF"), BLACK, WHITE),
    "1-bit PNG": (encode(Image.fromarray(RAMP > 0.5), "PNG"), BLACK, WHITE),
    "animated GIF": (two_frames("GIF"), RED, RED),
    "animated WebP": (two_frames("WEBP", lossless=True), RED, RED),
    "APNG": (two_frames("PNG"), RED, RED),
    "ICC profile JPEG": (encode(Image.new("RGB", (64, 32), RED), "JPEG", quality=95,
                                icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()),
                         RED, RED),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_mode_decodes_to_the_right_picture(name):
    (data, top_left, bottom_right) = SAMPLES[name]
    (first, last, size) = corners(data)
    assert size == (64, 32)
    assert near(first, top_left) and near(last, bottom_right), (first, last)


def test_palette_with_transparent_index():
    img = Image.new("P", (64, 32), 0)
    img.putpalette([*RED, *BLUE] + [0] * 762)
    img.paste(1, (32, 0, 64, 32))
    assert corners(encode(img, "PNG", transparency=0))[:2] == (WHITE, BLUE)


@pytest.mark.parametrize("orientation, size", [(1, (64, 32)), (3, (64, 32)), (6, (32, 64)), (8, (32, 64))])
def test_exif_orientation_with_a_near_maximal_exif_block(orientation, size):
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010E] = "x" * 60_000  # ImageDescription: APP1 holds at most ~64 KB
    assert corners(encode(Image.new("RGB", (64, 32), RED), "JPEG", exif=exif.tobytes()))[2] == size


def test_huge_exif_chunk_is_bounded_in_time():
    exif = Image.Exif()
    exif[0x010E] = "x" * 10_000_000
    data = encode(Image.new("RGB", (64, 32), RED), "PNG", exif=exif.tobytes())
    started = time.monotonic()
    assert corners(data)[:2] == (RED, RED)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("values", [RAMP, RAMP * 255, np.full((32, 64), np.nan)], ids=["0-1", "0-255", "nan"])
def test_float_images_are_unsupported(values):
    """Mode F has no display range: it used to come out black (0-1 data) or as clipped garbage."""
    data = encode(Image.fromarray(values.astype(np.float32), "F"), "TIFF")
    with pytest.raises(ImageRejected) as caught:
        process_image(data, AS_IS)
    assert caught.value.reason == "unsupported_image"
