"""Is there as much image data as the header promises?

Pillow raises when a file simply stops (no more bytes while the decoder wants
some), but not when the data ends *cleanly* early:

* a JPEG whose frame header declares 8000x8000 but whose scan holds 200x150 and
  then an end-of-image marker decodes "successfully": libjpeg only warns
  ("premature end of data segment") and fills the rest with grey (all samples
  128), which Pillow does not report;
* a WebP cut short fails with Pillow's generic "could not create decoder".

Each check returns why the data is short, or None.
"""
from __future__ import annotations

import simplejpeg
from PIL import Image

_JPEG_FORMATS = ("JPEG", "MPO")
_MISSING_SAMPLE = 128  # libjpeg's fill for blocks it had no data for (DC 0 after the level shift)
# decode_jpeg_header's colour space -> a target simplejpeg decodes it to without conversion errors.
_STRICT_COLORSPACE = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}


def container_shortfall(data: bytes) -> str | None:
    """A RIFF (WebP) file shorter than its declared size."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 8:
        declared = int.from_bytes(data[4:8], "little") + 8
        if declared > len(data):
            return f"WebP declares {declared} bytes, has {len(data)}"
    return None


def jpeg_shortfall(img: Image.Image, data: bytes) -> str | None:
    """For a loaded JPEG: None, or why its scan data ends before the declared picture does.

    The last pixel decoded is the last block libjpeg reached: if every band of
    it is the grey fill, the file is checked by a strict decode (the whole
    entropy-coded data at 1/8 scale, which raises on libjpeg's warnings).  Only
    such suspects pay for it; a picture genuinely ending in mid-grey passes.
    """
    if img.format not in _JPEG_FORMATS or not _ends_in_fill_grey(img):
        return None
    try:
        (_, _, colorspace, _) = simplejpeg.decode_jpeg_header(data)
        simplejpeg.decode_jpeg(data, colorspace=_STRICT_COLORSPACE.get(colorspace, "RGB"), strict=True,
                               min_height=1, min_width=1)
    except ValueError as err:
        # libjpeg's warnings for missing data; anything else (a variant simplejpeg
        # will not decode) leaves Pillow's successful decode standing.
        if any(sign in str(err).lower() for sign in ("premature end", "corrupt jpeg data")):
            return f"scan data ends early ({err})"
    return None


def _ends_in_fill_grey(img: Image.Image) -> bool:
    last = img.getpixel((img.width - 1, img.height - 1))
    bands = last if isinstance(last, tuple) else (last,)
    # CMYK from Adobe files is stored inverted: the fill reads 127 there.
    return all(abs(band - _MISSING_SAMPLE) <= 1 for band in bands)
