"""Precision and recall of the `watermark` stage on generated images.

Half of the images carry an overlay of the kinds stock sites and uploaders
add (a corner credit, a big translucent "SAMPLE" in the centre, tiled rows of
a brand name, a logo with text, a URL strip, a small bitmap-font credit); the
other half are clean "natural-ish" images (gradients, shapes, cloud-like
noise, landscapes, stripes) with no text at all.  Everything is drawn with
PIL's bundled fonts, so the set is the same on every machine and needs no
download.  The images are JPEG-encoded, as the pipeline hands them to stages.

    python benchmarks/watermark_eval.py --count 80
"""
from __future__ import annotations

import argparse
import io
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.records import Sample  # noqa: E402

BRANDS = (
    "© LensCraft Stock",
    "PixelVault",
    "SAMPLE",
    "PREVIEW",
    "photostudio.example",
    "DreamShots ©2024",
    "stockimages",
    "© Jan Novak Photography",
    "NOT FOR RESALE",
    "www.pictures-online.example",
)


@dataclass(frozen=True)
class BenchmarkImage:
    name: str  # "<background>+<overlay>" or "<background>"
    has_watermark: bool
    jpeg: bytes


@dataclass(frozen=True)
class Report:
    precision: float
    recall: float
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int
    seconds_per_image: float
    misses: tuple[str, ...]  # names of the wrongly classified images, with their scores


def make_benchmark(count: int = 40, seed: int = 0) -> list[BenchmarkImage]:
    """`count` images, alternately with and without a watermark."""
    rng = random.Random(seed)
    images = []
    for index in range(count):
        width, height = rng.choice([(512, 384), (384, 512), (448, 448), (640, 360), (320, 240)])
        background_name, draw_background = BACKGROUNDS[(index // 2) % len(BACKGROUNDS)]
        image = draw_background(rng, width, height)
        name = background_name
        has_watermark = index % 2 == 0
        if has_watermark:
            overlay_name, draw_overlay = OVERLAYS[(index // 2) % len(OVERLAYS)]
            image = draw_overlay(rng, image)
            name = f"{background_name}+{overlay_name}"
        images.append(BenchmarkImage(f"{index:03d}-{name}", has_watermark, _jpeg(image)))
    return images


def evaluate(stage, images: list[BenchmarkImage]) -> Report:
    """Score `images` with a set-up watermark stage and compare its verdicts with the truth."""
    samples = [Sample(key=image.name, shard_id=0, url="", image=image.jpeg) for image in images]
    started = time.perf_counter()
    batch_size = stage.params.batch_size
    for start in range(0, len(samples), batch_size):
        stage.score(samples[start : start + batch_size])
    seconds = time.perf_counter() - started
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    misses = []
    threshold = stage.params.threshold
    for image, sample in zip(images, samples):
        flagged = sample.fields["watermark_score"] >= threshold
        outcome = ("t" if flagged == image.has_watermark else "f") + ("p" if flagged else "n")
        counts[outcome] += 1
        if outcome[0] == "f":
            misses.append(f"{image.name} ({sample.fields['watermark_score']:.2f})")
    flagged_total = counts["tp"] + counts["fp"]
    positives = counts["tp"] + counts["fn"]
    return Report(
        precision=counts["tp"] / flagged_total if flagged_total else 1.0,
        recall=counts["tp"] / positives if positives else 1.0,
        true_positives=counts["tp"],
        false_positives=counts["fp"],
        false_negatives=counts["fn"],
        true_negatives=counts["tn"],
        seconds_per_image=seconds / max(len(images), 1),
        misses=tuple(misses),
    )


# Backgrounds ---------------------------------------------------------------


def _random_color(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))


def _linear_gradient(rng: random.Random, width: int, height: int) -> Image.Image:
    start, end = np.array(_random_color(rng), float), np.array(_random_color(rng), float)
    angle = rng.uniform(0, np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    t = xs / width * np.cos(angle) + ys / height * np.sin(angle)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    pixels = start + t[..., None] * (end - start)
    return Image.fromarray(pixels.astype(np.uint8))


def _shapes(rng: random.Random, width: int, height: int) -> Image.Image:
    image = _linear_gradient(rng, width, height)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 8)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randint(20, width // 2), y0 + rng.randint(20, height // 2)
        shape = rng.choice((draw.ellipse, draw.rectangle))
        shape((x0, y0, x1, y1), fill=_random_color(rng))
    return image


def _cloud_noise(rng: random.Random, width: int, height: int) -> Image.Image:
    coarse = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC).filter(ImageFilter.GaussianBlur(4))


def _landscape(rng: random.Random, width: int, height: int) -> Image.Image:
    image = _linear_gradient(rng, width, height)
    draw = ImageDraw.Draw(image)
    sun = rng.randrange(width), rng.randrange(height // 3)
    draw.ellipse((sun[0] - 30, sun[1] - 30, sun[0] + 30, sun[1] + 30), fill=(250, 220, 120))
    for layer in range(3):
        base = height * (0.5 + 0.15 * layer)
        ridge = [(x, base - rng.uniform(0, height * 0.25)) for x in range(0, width + 64, 64)]
        draw.polygon([(0, height), *ridge, (width, height)], fill=_random_color(rng))
    grain = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, float) + grain, 0, 255).astype(np.uint8))


def _stripes(rng: random.Random, width: int, height: int) -> Image.Image:
    # A hard negative: regular high-contrast edges, which text detectors like.
    image = Image.new("RGB", (width, height), _random_color(rng))
    draw = ImageDraw.Draw(image)
    period, color = rng.randint(12, 40), _random_color(rng)
    for x in range(-height, width, period):
        draw.line((x, 0, x + height, height), fill=color, width=period // 3)
    return image


def _fine_noise(rng: random.Random, width: int, height: int) -> Image.Image:
    noise = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1))


BACKGROUNDS = (
    ("gradient", _linear_gradient),
    ("shapes", _shapes),
    ("clouds", _cloud_noise),
    ("landscape", _landscape),
    ("stripes", _stripes),
    ("noise", _fine_noise),
)


# Overlays ------------------------------------------------------------------


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _contrasting_fill(image: Image.Image, box: tuple[int, int, int, int], alpha: int) -> tuple[int, int, int, int]:
    luminance = np.asarray(image.convert("L").crop(box), float).mean() if box[2] > box[0] and box[3] > box[1] else 128
    return (0, 0, 0, alpha) if luminance > 140 else (255, 255, 255, alpha)


def _composite(image: Image.Image, layer: Image.Image) -> Image.Image:
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def _text_layer(image: Image.Image, text: str, font, xy: tuple[int, int], alpha: int) -> Image.Image:
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    box = tuple(int(v) for v in draw.textbbox(xy, text, font=font))
    draw.text(xy, text, font=font, fill=_contrasting_fill(image, box, alpha))
    return layer


def _corner_text(rng: random.Random, image: Image.Image) -> Image.Image:
    font = _font(rng.randint(max(14, image.width // 30), max(16, image.width // 18)))
    text = rng.choice(BRANDS)
    text_w, text_h = _text_size(text, font)
    margin = rng.randint(6, 16)
    x = rng.choice((margin, image.width - text_w - margin))
    y = rng.choice((margin, image.height - text_h - margin))
    return _composite(image, _text_layer(image, text, font, (x, y), rng.randint(170, 255)))


def _centre_text(rng: random.Random, image: Image.Image) -> Image.Image:
    text = rng.choice(("SAMPLE", "PREVIEW", "PixelVault", "stockimages"))
    font = _font(image.width // max(len(text) - 1, 4))
    text_w, text_h = _text_size(text, font)
    xy = ((image.width - text_w) // 2, (image.height - text_h) // 2)
    return _composite(image, _text_layer(image, text, font, xy, rng.randint(90, 160)))


def _tiled_text(rng: random.Random, image: Image.Image) -> Image.Image:
    text = rng.choice(("stockimages", "PixelVault", "© LensCraft"))
    font = _font(rng.randint(16, 24))
    text_w, text_h = _text_size(text, font)
    side = int(np.hypot(*image.size))
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    fill = (255, 255, 255, rng.randint(110, 170))
    for row, y in enumerate(range(0, side, text_h * 4)):
        for x in range(-(row % 2) * text_w // 2, side, text_w + 40):
            draw.text((x, y), text, font=font, fill=fill)
    layer = layer.rotate(rng.choice((0, 0, 20, -30)), resample=Image.BICUBIC)
    left, top = (side - image.width) // 2, (side - image.height) // 2
    return _composite(image, layer.crop((left, top, left + image.width, top + image.height)))


def _logo(rng: random.Random, image: Image.Image) -> Image.Image:
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    text = rng.choice(("ACME PHOTO", "DreamShots", "PixelVault"))
    font = _font(max(18, image.width // 22))
    text_w, text_h = _text_size(text, font)
    radius = text_h
    x = image.width - text_w - 2 * radius - 20
    y = image.height - 2 * radius - 16
    alpha = rng.randint(160, 230)
    draw.ellipse((x, y, x + 2 * radius, y + 2 * radius), fill=(230, 60, 40, alpha))
    draw.text((x + 2 * radius + 8, y + radius - text_h // 2), text, font=font, fill=(255, 255, 255, alpha))
    return _composite(image, layer)


def _url_strip(rng: random.Random, image: Image.Image) -> Image.Image:
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = _font(max(14, image.height // 24))
    text = rng.choice(("www.pictures-online.example", "photostudio.example/portfolio", "© DreamShots 2024"))
    _, text_h = _text_size(text, font)
    top = image.height - text_h - 12
    draw.rectangle((0, top, image.width, image.height), fill=(0, 0, 0, 140))
    draw.text((10, top + 5), text, font=font, fill=(255, 255, 255, 230))
    return _composite(image, layer)


def _bitmap_credit(rng: random.Random, image: Image.Image) -> Image.Image:
    # PIL's built-in bitmap font, scaled up: a second, pixelated typeface.
    text = rng.choice(("(c) stockimages", "NOT FOR RESALE", "photo: J. Novak"))
    font = ImageFont.load_default_imagefont()
    text_w, text_h = _text_size(text, font)
    scale = rng.choice((2, 3))
    patch = Image.new("RGBA", (text_w + 2, text_h + 2), (0, 0, 0, 0))
    ImageDraw.Draw(patch).text((1, 1), text, font=font, fill=(255, 255, 255, 235))
    patch = patch.resize((patch.width * scale, patch.height * scale), Image.NEAREST)
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    layer.paste(patch, (image.width - patch.width - 10, image.height - patch.height - 10))
    # A soft dark halo under the letters keeps them legible on any background.
    halo = _darken(layer.filter(ImageFilter.GaussianBlur(2)))
    return _composite(_composite(image, halo), layer)


def _darken(layer: Image.Image) -> Image.Image:
    black = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    black.putalpha(layer.getchannel("A"))
    return black


def _text_size(text: str, font) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


OVERLAYS = (
    ("corner_text", _corner_text),
    ("centre_text", _centre_text),
    ("tiled_text", _tiled_text),
    ("logo", _logo),
    ("url_strip", _url_strip),
    ("bitmap_credit", _bitmap_credit),
    ("corner_text", _corner_text),
)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    from filters.watermark import WatermarkFilter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=WatermarkFilter.Params.threshold)
    parser.add_argument("--save", type=Path, help="also write the images here, for a look")
    args = parser.parse_args(argv)

    images = make_benchmark(args.count, args.seed)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for image in images:
            (args.save / f"{image.name}.jpg").write_bytes(image.jpeg)
    stage = WatermarkFilter(WatermarkFilter.Params(threshold=args.threshold))
    stage.setup()
    report = evaluate(stage, images)
    print(
        f"images={len(images)} precision={report.precision:.3f} recall={report.recall:.3f} "
        f"tp={report.true_positives} fp={report.false_positives} "
        f"fn={report.false_negatives} tn={report.true_negatives} "
        f"ms/image={report.seconds_per_image * 1000:.0f}"
    )
    for miss in report.misses:
        print("  wrong:", miss)


if __name__ == "__main__":
    main()
