"""Throughput of decode + resize + encode, single process: draft decode vs full decode.

Generates photo-like JPEGs (640x480 .. 1024x768) in memory, or reads the
images of a folder (`--web`, e.g. throughput.py's generated web), then times
`process_image` with and without JPEG draft decoding, a simplejpeg variant
(libjpeg-turbo's TurboJPEG API, which scales by any M/8 where Pillow's draft
has 1/2, 1/4, 1/8; the rest as curate does it, without its checks), and
img2dataset's cv2 Resizer when it is installed.  Quality: PSNR of each candidate's output pixels against
a full decode resized with LANCZOS.  Not a test: run it by hand.

    python benchmarks/bench_imaging.py [--count 200] [--mode border] [--size 256] [--web DIR]
"""
from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

import simplejpeg

from pipeline.media import imaging
from pipeline.media.imaging import ProcessedImage, ResizeParams, _process_image

SIZES = ((640, 480), (800, 600), (1024, 768), (768, 1024), (960, 720))


def photo_jpeg(size: tuple[int, int], rng: np.random.Generator) -> bytes:
    """Gradients, a few shapes and sensor-like noise: entropy close to a web photo."""
    (width, height) = size
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6.28, 3)
    base = np.stack(
        [127 + 100 * np.sin(x / rng.uniform(20, 90) + phase[c]) * np.cos(y / rng.uniform(20, 90)) for c in range(3)],
        -1,
    )
    noise = rng.normal(0, 6, (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=int(rng.integers(75, 95)))
    return out.getvalue()


def best_rates(candidates: dict[str, Callable[[bytes], object]], images: list[bytes], repeats: int) -> dict[str, float]:
    """Best images per CPU-second of each candidate; rounds are interleaved and CPU
    time is used so that other load on the machine skews them less."""
    best = dict.fromkeys(candidates, 0.0)
    for _ in range(repeats):
        for name, process in candidates.items():
            start = time.process_time()
            for data in images:
                process(data)
            best[name] = max(best[name], len(images) / (time.process_time() - start))
    return best


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255**2 / error)


def quality(candidates: dict[str, Callable[[bytes], object]], images: list[bytes], params: ResizeParams) -> dict:
    """Mean and lowest PSNR (dB) of each candidate's output pixels against full decode + LANCZOS."""
    downscale, imaging._DOWNSCALE_FILTER = imaging._DOWNSCALE_FILTER, Image.Resampling.LANCZOS
    try:
        references = [_process_image(data, params, use_draft=False).pixels for data in images]
    finally:
        imaging._DOWNSCALE_FILTER = downscale
    figures = {}
    for name, process in candidates.items():
        values = [min(psnr(process(data).pixels, ref), 99.0) for data, ref in zip(images, references)]
        figures[name] = (float(np.mean(values)), float(np.min(values)))
    return figures


def simplejpeg_process(data: bytes, params: ResizeParams) -> ProcessedImage:
    """A JPEG decoded by simplejpeg at the smallest M/8 scale covering the target, then resized, padded and
    encoded as curate does (no EXIF orientation: the generated images have none); other formats as curate."""
    if data[:2] != b"\xff\xd8":
        return _process_image(data, params)
    (height, width, _, _) = simplejpeg.decode_jpeg_header(data)
    plan = imaging.plan_resize(width, height, params)
    (min_width, min_height) = plan.scaled_size or (0, 0)
    pixels = Image.fromarray(simplejpeg.decode_jpeg(data, "RGB", fastdct=False, fastupsample=False,
                                                    min_height=min_height, min_width=min_width, strict=False))
    result = imaging._apply_plan(pixels, plan, (width, height))
    return ProcessedImage(imaging.encode_image(result, params), params.encode_format, *result.size, width, height,
                          result)


def read_web(folder: Path, count: int) -> list[bytes]:
    return [path.read_bytes() for path in sorted(folder.glob("*.[jp][pn]g"))[:count]]


def img2dataset_process(params: ResizeParams) -> Callable[[bytes], object] | None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI version check
    try:
        from img2dataset.resizer import Resizer
    except ImportError:
        return None
    resizer = Resizer(
        image_size=params.image_size,
        resize_mode=params.resize_mode,
        resize_only_if_bigger=params.resize_only_if_bigger,
        encode_format=params.encode_format,
        encode_quality=params.encode_quality,
    )
    return lambda data: resizer(io.BytesIO(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--mode", default="border", choices=["no", "keep_ratio", "center_crop", "border"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--format", default="jpg", choices=["jpg", "png", "webp"])
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--web", type=Path, help="read the images of this folder (*.jpg, *.png) instead")
    args = parser.parse_args()

    if args.web:
        images = read_web(args.web, args.count)
    else:
        rng = np.random.default_rng(0)
        images = [photo_jpeg(SIZES[i % len(SIZES)], rng) for i in range(args.count)]
    params = ResizeParams(image_size=args.size, resize_mode=args.mode, encode_format=args.format,
                          encode_quality=args.quality)
    mean_kb = sum(map(len, images)) / len(images) / 1024
    print(f"{len(images)} images, mean {mean_kb:.0f} KiB, -> {args.mode} {args.size} {args.format}")

    ours = {
        "curate, draft decode (Pillow)": lambda data: _process_image(data, params, use_draft=True),
        "simplejpeg DCT-scaled decode": lambda data: simplejpeg_process(data, params),
        "curate, full decode": lambda data: _process_image(data, params, use_draft=False),
    }
    candidates = dict(ours)
    theirs = img2dataset_process(params)
    if theirs is not None:
        candidates["img2dataset Resizer (cv2)"] = theirs
    psnr_db = quality(ours, images, params)
    for name, images_per_second in best_rates(candidates, images, args.repeats).items():
        mean_db, low_db = psnr_db.get(name, (float("nan"), float("nan")))
        print(f"{name:36s} {images_per_second:7.1f} images/CPU-s  {1000 / images_per_second:6.2f} ms  "
              f"PSNR vs full+LANCZOS mean {mean_db:5.1f} dB, lowest {low_db:5.1f} dB")


if __name__ == "__main__":
    main()
