"""A per-process budget of decoded image bytes in flight, shared by the download threads.

`max_pixels` bounds one image, not the threads decoding at once: 32 threads
each holding a 9000x9000 16-bit PNG and its RGB copy need tens of GB.  So each
decode first reserves its estimated peak bytes (`estimate_decode_bytes`) from
the process's budget and waits while the others' reservations leave too
little; an image whose estimate alone exceeds the budget can never fit and is
refused at once.  Memory for decoding is then about `budget` whatever the
thread count, at the cost of running big decodes one after another.
"""
from __future__ import annotations

import contextlib
import threading

from PIL import Image

# Pillow keeps 1, L and P in one byte a pixel, I;16 in two, everything else in four.
_ONE_BYTE_MODES = ("1", "L", "P")
_RGB_BYTES_PER_PIXEL = 4  # Pillow stores RGB as RGBX


class OverBudget(Exception):
    """The image needs more decode memory than the whole budget."""


class DecodeBudget:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._in_use = 0
        self._freed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int):
        """Reserve `nbytes` for the duration of the block, waiting for room; OverBudget if it never fits."""
        if nbytes > self.capacity:
            raise OverBudget(f"needs ~{nbytes / 2**20:.0f} MiB to decode, more than decode_budget_bytes={self.capacity}")
        with self._freed:
            self._freed.wait_for(lambda: self._in_use + nbytes <= self.capacity)
            self._in_use += nbytes
        try:
            yield
        finally:
            with self._freed:
                self._in_use -= nbytes
                self._freed.notify_all()

    @property
    def in_use(self) -> int:
        return self._in_use


_budgets: dict[int, DecodeBudget] = {}
_budgets_lock = threading.Lock()


def shared_budget(capacity: int) -> DecodeBudget:
    """The process's budget of that capacity (one per value, so all threads of a run share it)."""
    with _budgets_lock:
        return _budgets.setdefault(capacity, DecodeBudget(capacity))


def estimate_decode_bytes(img: Image.Image, rotated: bool, output_pixels: int) -> int:
    """Peak bytes to decode `img` (opened, drafted, not loaded) and turn it into the RGB output.

    Counts the decoded image in its own mode, the conversions `imaging._to_rgb`
    makes (16-bit grey goes through a uint16 copy and an 8-bit one; alpha
    through RGBA and a white RGB background), the upright copy when the EXIF
    orientation turns it, and the output image with its encode buffer.
    """
    pixels = img.width * img.height
    mode = img.mode
    if mode in _ONE_BYTE_MODES:
        decoded = 1
    elif mode.startswith("I;16"):
        decoded = 2
    else:
        decoded = 4
    converted = _conversion_bytes_per_pixel(img)
    upright = _RGB_BYTES_PER_PIXEL if rotated else 0
    return pixels * (decoded + converted + upright) + output_pixels * (_RGB_BYTES_PER_PIXEL + 1)


def _conversion_bytes_per_pixel(img: Image.Image) -> int:
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return 0
    if mode.startswith("I") or mode == "F":  # a 16/32-bit copy, an 8-bit one, then RGB
        return 4 + 1 + _RGB_BYTES_PER_PIXEL
    if mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in img.info:
        rgba = 0 if mode == "RGBA" else 4
        return rgba + 1 + _RGB_BYTES_PER_PIXEL  # + the alpha band used as the paste mask
    return _RGB_BYTES_PER_PIXEL
