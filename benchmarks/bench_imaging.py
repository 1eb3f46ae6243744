"""Throughput of decode + resize + encode, single process: draft decode vs full decode.

Generates photo-like JPEGs (640x480 .. 1024x768) in memory, then times
`process_image` with and without JPEG draft decoding, and img2dataset's cv2
Resizer when it is installed.  Not a test: run it by hand.

    python benchmarks/bench_imaging.py [--count 200] [--mode border] [--size 256]
"""
from __future__ import annotations

import argparse
import io
import os
import time
from typing import Callable

import numpy as np
from PIL import Image

from pipeline.media.imaging import ResizeParams, _process_image

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
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = [photo_jpeg(SIZES[i % len(SIZES)], rng) for i in range(args.count)]
    params = ResizeParams(image_size=args.size, resize_mode=args.mode, encode_format=args.format)
    mean_kb = sum(map(len, images)) / len(images) / 1024
    print(f"{len(images)} JPEGs, mean {mean_kb:.0f} KiB, -> {args.mode} {args.size} {args.format}")

    candidates = {
        "curate, draft decode": lambda data: _process_image(data, params, use_draft=True),
        "curate, full decode": lambda data: _process_image(data, params, use_draft=False),
    }
    theirs = img2dataset_process(params)
    if theirs is not None:
        candidates["img2dataset Resizer (cv2)"] = theirs
    for name, images_per_second in best_rates(candidates, images, args.repeats).items():
        print(f"{name:28s} {images_per_second:7.1f} images/CPU-s")


if __name__ == "__main__":
    main()
