"""Fuzz the image decode path: `process_image` on mutated images.

Invariants: every input either becomes an image or raises ImageRejected with
one of imaging.REJECT_REASONS; any other exception, an input slower than
libFuzzer's -timeout, or memory above -rss_limit_mb is a finding.

    .venv/bin/python tests/fuzz/fuzz_imaging.py CORPUS_DIR -max_total_time=60 -rss_limit_mb=1536 -timeout=10
    .venv/bin/python tests/fuzz/fuzz_imaging.py --seed-corpus CORPUS_DIR   # write the seed images

Pillow and our modules are instrumented, so coverage guides the mutations
through the Python parsers (PNG chunks, JPEG markers, TIFF/EXIF IFDs, GIF blocks).
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import atheris
import numpy  # noqa: F401 - imported before instrumenting: coverage of numpy itself is noise
import simplejpeg  # noqa: F401 - a compiled module, nothing to instrument

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    import PIL.Image
    import PIL.ImageFile
    from pipeline.media import decode_budget, image_integrity, imaging  # noqa: F401 - instrumented

# Small limits keep each input fast; the budget is the default's order of magnitude.
PARAMS = [
    imaging.ResizeParams(max_pixels=4_000_000, decode_budget_bytes=256 << 20),
    imaging.ResizeParams(resize_mode="no", encode_format="png", max_pixels=1_000_000, skip_reencode=True),
    imaging.ResizeParams(resize_mode="center_crop", image_size=64, encode_format="webp", max_pixels=4_000_000),
]


def test_one_input(data: bytes) -> None:
    params = PARAMS[data[0] % len(PARAMS)] if data else PARAMS[0]
    try:
        imaging.process_image(data, params)
    except imaging.ImageRejected as err:
        if err.reason not in imaging.REJECT_REASONS:
            raise AssertionError(f"undocumented reject reason {err.reason!r}") from err


def write_seed_corpus(folder: Path) -> None:
    """Small valid images of every format and mode the decoder handles."""
    import numpy as np  # noqa: PLC0415 - only the seeding needs it

    folder.mkdir(parents=True, exist_ok=True)
    rgb = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    seeds = {
        "rgb.jpg": (rgb, "JPEG", {"exif": exif.tobytes()}),
        "progressive.jpg": (rgb, "JPEG", {"progressive": True}),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {}),
        "rgba.png": (rgb.convert("RGBA"), "PNG", {}),
        "p.png": (rgb.convert("P"), "PNG", {"transparency": 0}),
        "i16.png": (PIL.Image.fromarray(np.arange(768, dtype=np.uint16).reshape(24, 32) * 80), "PNG", {}),
        "la.png": (rgb.convert("LA"), "PNG", {}),
        "anim.gif": (rgb, "GIF", {"save_all": True, "append_images": [rgb.rotate(90)]}),
        "anim.webp": (rgb, "WEBP", {"save_all": True, "append_images": [rgb.rotate(90)]}),
        "apng.png": (rgb, "PNG", {"save_all": True, "append_images": [rgb.rotate(90)]}),
        "cmyk.tif": (rgb.convert("CMYK"), "TIFF", {}),
        "bilevel.bmp": (rgb.convert("1"), "BMP", {}),
        "grey.ppm": (rgb.convert("L"), "PPM", {}),
        "icon.ico": (rgb, "ICO", {}),
    }
    for name, (img, fmt, options) in seeds.items():
        out = io.BytesIO()
        img.save(out, fmt, **options)
        (folder / name).write_bytes(out.getvalue())


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seed-corpus":
        write_seed_corpus(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
