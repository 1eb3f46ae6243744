"""Decode memory is bounded per process by resize.decode_budget_bytes, whatever the threads."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pipeline.media import decode_budget, imaging
from pipeline.media.decode_budget import DecodeBudget, OverBudget, estimate_decode_bytes
from pipeline.media.imaging import ImageRejected, ResizeParams, process_image
from pipeline.core.params import ParamError

MIB = 1 << 20


def png(mode: str, size: tuple[int, int] = (1000, 1000)) -> bytes:
    (width, height) = size
    ramp = np.tile(np.arange(width, dtype=np.uint16) * 60, (height, 1))
    img = Image.fromarray(ramp) if mode == "I;16" else Image.fromarray((ramp >> 8).astype(np.uint8)).convert(mode)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_image_that_cannot_fit_the_budget_is_rejected():
    # 1000x1000 16-bit: ~11 bytes a pixel (decoded, uint16 copy, 8-bit, RGB) is more than 4 MiB.
    params = ResizeParams(decode_budget_bytes=4 * MIB)
    with pytest.raises(ImageRejected) as caught:
        process_image(png("I;16"), params)
    assert caught.value.reason == "decode_budget_exceeded"
    assert process_image(png("L", (500, 500)), params).width == 256  # a small one still fits


@pytest.mark.parametrize("mode, at_least", [("L", 1 + 4), ("P", 1 + 4), ("I;16", 2 + 9), ("RGBA", 4 + 5), ("LA", 4 + 9)])
def test_estimate_counts_bit_depth_and_mode(mode, at_least):
    img = opened(png(mode))
    assert img.mode == mode
    assert estimate_decode_bytes(img, rotated=False, output_pixels=0) >= at_least * 1_000_000
    assert estimate_decode_bytes(img, rotated=True, output_pixels=0) > estimate_decode_bytes(img, False, 0)


def test_decodes_wait_for_room_in_the_budget(monkeypatch):
    """Eight threads, a budget that holds one such image: never two decodes at once, all succeed."""
    data = png("I;16", (600, 600))
    one_image = estimate_decode_bytes(opened(data), False, 256 * 256)
    params = ResizeParams(decode_budget_bytes=max(MIB, int(one_image * 1.5)))
    running, most = 0, 0
    lock = threading.Lock()
    real_decode = imaging._decode_held

    def counted_decode(*args):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        try:
            return real_decode(*args)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(imaging, "_decode_held", counted_decode)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: process_image(data, params), range(16)))
    assert most == 1
    assert all(result.width == 256 for result in results)
    assert decode_budget.shared_budget(params.decode_budget_bytes).in_use == 0


def test_budget_is_released_when_a_decode_fails():
    budget = DecodeBudget(10)
    with pytest.raises(RuntimeError), budget.hold(8):
        raise RuntimeError("decoder blew up")
    assert budget.in_use == 0
    with pytest.raises(OverBudget):
        with budget.hold(11):
            pass


def test_budget_param_is_validated():
    with pytest.raises(ParamError):
        ResizeParams(decode_budget_bytes=1000)


def test_sixteen_bit_conversion_makes_no_wide_copies(monkeypatch):
    """The 16-bit path used to go through int64 arrays (8 bytes a pixel, three of them)."""
    widths = []
    real_array = np.array

    def recording_array(obj, *args, **kwargs):
        result = real_array(obj, *args, **kwargs)
        widths.append(result.dtype.itemsize)
        return result

    monkeypatch.setattr(imaging.np, "array", recording_array)
    monkeypatch.setattr(imaging.np, "asarray", recording_array)
    process_image(png("I;16", (64, 64)), ResizeParams())
    assert widths and max(widths) <= 4
