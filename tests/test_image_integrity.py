"""Images with less data than their header declares are rejected as truncated_image."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from pipeline.media.imaging import ImageRejected, ResizeParams, process_image


def noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    (width, height) = size
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def jpeg_claiming(width: int, height: int, mode: str = "RGB", **options) -> bytes:
    """A real 200x150 JPEG whose frame header (SOF) is rewritten to say width x height."""
    data = bytearray(encode(noise((200, 150), mode), "JPEG", **options))
    at = 2
    while data[at + 1] not in (0xC0, 0xC1, 0xC2):  # walk the marker segments to the frame header
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def rejection(data: bytes, params: ResizeParams = ResizeParams()) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        process_image(data, params)
    return caught.value


@pytest.mark.parametrize("options", [{}, {"progressive": True}], ids=["baseline", "progressive"])
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_with_less_data_than_its_header_is_truncated(mode, options):
    """Decoded, this is 8000x8000 of flat grey with a 200x150 picture in a corner."""
    err = rejection(jpeg_claiming(8000, 8000, mode, **options))
    assert err.reason == "truncated_image", err


def test_lying_jpeg_is_rejected_whatever_the_resize():
    data = jpeg_claiming(1600, 1200)
    for params in (ResizeParams(resize_mode="no"), ResizeParams(skip_reencode=True, resize_mode="no"),
                   ResizeParams(image_size=64, resize_mode="center_crop")):
        assert rejection(data, params).reason == "truncated_image"


def test_jpeg_ending_in_mid_grey_is_kept():
    """The grey fill is only a suspicion: a complete picture with a 128-grey corner stays."""
    img = noise((320, 240))
    img.paste((128, 128, 128), (160, 120, 320, 240))
    result = process_image(encode(img, "JPEG", quality=95), ResizeParams(resize_mode="no"))
    assert (result.original_width, result.original_height) == (320, 240)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_cut_files_are_truncated(fmt, fraction):
    data = encode(noise((400, 300)), fmt)
    assert rejection(data[: int(len(data) * fraction)]).reason == "truncated_image"
