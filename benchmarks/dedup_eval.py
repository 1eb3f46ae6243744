"""Precision and recall of `dedup_image` clusters on a generated near-duplicate set.

Base pictures are drawn from a seeded generator: a colour layout (a gradient
and a few large soft colour blocks) plus detail (shapes, lines, blurred
noise texture, sometimes text).  Each base gets near-duplicate copies of the
kinds a crawl finds: re-encoded at several JPEG qualities, resized, lightly
cropped (<= 5%), brightness-shifted, with a caption-like text overlay, and a
resize + low-quality combination.  Hard negatives are distinct pictures with
the SAME colour layout and different detail: they must not be merged.

Every image goes through the pipeline's own resize (256 px, border, JPEG 90)
before hashing, as the stage sees it.  Clusters come from the same functions
the Beam stage uses (`pipeline.dedup.clustering.cluster_in_memory`); `--beam` also runs the
real stage at the default threshold and checks it agrees.

Metrics are over pairs of images: a pair is positive when both come from one
base.  Precision = predicted-together pairs that are true, recall = true
pairs predicted together.  "wrong drops" counts dropped images whose kept
sample is not from their own base.

    python benchmarks/dedup_eval.py --bases 80
"""
from __future__ import annotations

import argparse
import io
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.dedup_image import ImageDedup  # noqa: E402
from pipeline.dedup.clustering import cluster_in_memory  # noqa: E402
from pipeline.dedup.image_signatures import sample_signature  # noqa: E402
from pipeline.media.imaging import ResizeParams, process_image  # noqa: E402
from pipeline.core.records import Sample  # noqa: E402

SIZES = ((480, 360), (400, 400), (360, 480), (640, 360), (512, 384))
WORDS = ("sale", "summer", "holiday", "the best view", "photo by anna", "2024", "new!", "click here", "beach", "city")
PIPELINE_RESIZE = ResizeParams(image_size=256, resize_mode="border", encode_quality=90)


@dataclass(frozen=True)
class Item:
    group: int  # images of one base share a group; hard negatives have their own
    variant: str
    jpeg: bytes  # after the pipeline's resize


def colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def layout(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A gradient with a few large blurred colour blocks: the picture's colour layout."""
    width, height = size
    top, bottom = np.array(colour(rng)), np.array(colour(rng))
    ramp = np.linspace(0, 1, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 5))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 4, width // 2)), int(rng.integers(height // 4, height // 2))
        draw.rectangle((x - w // 2, y - h // 2, x + w // 2, y + h // 2), fill=colour(rng))
    return image.filter(ImageFilter.GaussianBlur(max(size) / 20))


def detail(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shapes, lines and texture on top of the layout: what makes a picture itself."""
    image = image.copy()
    width, height = image.size
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 12))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(8, max(width, height) // 6))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour(rng))
        elif kind == 1:
            points = [(x + int(rng.integers(-r, r)), y + int(rng.integers(-r, r))) for _ in range(3)]
            draw.polygon(points, fill=colour(rng))
        else:
            draw.line((x, y, x + int(rng.integers(-2 * r, 2 * r)), y + int(rng.integers(-2 * r, 2 * r))),
                      fill=colour(rng), width=int(rng.integers(2, 8)))
    noise = rng.normal(0, 18, (height, width, 1)).repeat(3, axis=2)
    textured = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(textured).filter(ImageFilter.GaussianBlur(1))
    if rng.random() < 0.4:
        ImageDraw.Draw(image).text((int(rng.integers(0, width // 2)), int(rng.integers(0, height - 20))),
                                   str(rng.choice(WORDS)), fill=colour(rng), font=font(24))
    return image


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size)


def encode(image: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def variants(base: Image.Image, rng: np.random.Generator) -> dict[str, bytes]:
    """Near-duplicate copies of one picture, as a crawl finds them."""
    width, height = base.size
    copies = {"original": encode(base)}
    for quality in (75, 50, 30):
        copies[f"jpeg{quality}"] = encode(base, quality)
    for scale in (0.5, 0.75):
        smaller = base.resize((int(width * scale), int(height * scale)), Image.Resampling.BICUBIC)
        copies[f"resize{scale}"] = encode(smaller)
    for share in (0.03, 0.05):
        dx, dy = int(width * share), int(height * share)
        left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        copies[f"crop{share}"] = encode(base.crop((left, top, width - (dx - left), height - (dy - top))))
    for factor in (0.85, 1.15):
        copies[f"brightness{factor}"] = encode(ImageEnhance.Brightness(base).enhance(factor))
    overlaid = base.copy()
    ImageDraw.Draw(overlaid).text((10, height - 40), "© www.example-photos.com", fill=(255, 255, 255), font=font(22))
    copies["text"] = encode(overlaid)
    copies["resize0.6+jpeg40"] = encode(base.resize((int(width * 0.6), int(height * 0.6))), 40)
    return copies


def build_set(bases: int, negatives_per_base: int, seed: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    items = []
    groups = itertools.count()
    for _ in range(bases):
        size = SIZES[int(rng.integers(0, len(SIZES)))]
        layout_seed = int(rng.integers(0, 2**31))
        background = layout(np.random.default_rng(layout_seed), size)
        group = next(groups)
        for name, data in variants(detail(background, rng), rng).items():
            items.append(Item(group, name, pipeline_view(data)))
        for _ in range(negatives_per_base):
            items.append(Item(next(groups), "same_layout", pipeline_view(encode(detail(background, rng)))))
    return items


def pipeline_view(data: bytes) -> bytes:
    return process_image(data, PIPELINE_RESIZE).data


def samples_of(items: list[Item]) -> list[Sample]:
    return [Sample(key=f"{i:06d}", shard_id=i // 100, url=f"item{i}", image=item.jpeg) for i, item in enumerate(items)]


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    dropped: int
    wrong_drops: int
    seconds: float

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def hash_all(samples: list[Sample]) -> float:
    """Hashes every sample once (pHash, dHash, colour grid into fields); seconds per image."""
    start = time.perf_counter()
    for s in samples:
        sample_signature(s, "dhash")
    return (time.perf_counter() - start) / len(samples)


def evaluate(items: list[Item], samples: list[Sample], params) -> tuple[Score, dict[str, str]]:
    """Clusters the already hashed samples with the stage's own functions."""
    stage = ImageDedup(params)
    start = time.perf_counter()
    candidates = [stage.candidate(s) for s in samples]
    losers, _unresolved = cluster_in_memory(candidates, stage.matcher(), params.max_group_size, params.component_rounds)
    seconds = time.perf_counter() - start
    return score(items, losers, seconds), losers


def score(items: list[Item], losers: dict[str, str], seconds: float) -> Score:
    cluster = [losers.get(f"{i:06d}", f"{i:06d}") for i in range(len(items))]
    true_pairs = predicted_pairs = both = 0
    for a, b in itertools.combinations(range(len(items)), 2):
        same_group, same_cluster = items[a].group == items[b].group, cluster[a] == cluster[b]
        true_pairs += same_group
        predicted_pairs += same_cluster
        both += same_group and same_cluster
    wrong = sum(items[int(loser)].group != items[int(winner)].group for loser, winner in losers.items())
    precision = both / predicted_pairs if predicted_pairs else 1.0
    return Score(precision, both / true_pairs if true_pairs else 1.0, len(losers), wrong, seconds)


def run_beam_stage(samples: list[Sample], params) -> dict[str, str]:
    import glob
    import json
    import tempfile

    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.test_pipeline import TestPipeline

    with tempfile.TemporaryDirectory() as folder:
        with TestPipeline(runner=FnApiRunner()) as pipeline:
            result = pipeline | beam.Create(samples) | ImageDedup(params).transform()
            _ = (
                result["rejected"]
                | beam.Map(lambda r: json.dumps([r.key, r.fields["duplicate_of"]]))
                | beam.io.WriteToText(f"{folder}/losers")
            )
        lines = [line for path in glob.glob(f"{folder}/losers*") for line in open(path)]
    return dict(json.loads(line) for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=int, default=60)
    parser.add_argument("--negatives", type=int, default=2, help="same-layout distinct pictures per base")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--beam", action="store_true", help="also run the Beam stage at the default threshold")
    args = parser.parse_args(argv)

    items = build_set(args.bases, args.negatives, args.seed)
    samples = samples_of(items)
    groups = len({item.group for item in items})
    print(f"{len(items)} images: {args.bases} bases x {len(items) // args.bases - args.negatives} copies "
          f"+ {args.bases * args.negatives} same-layout distinct pictures ({groups} true groups)")
    print(f"hashing (decode, pHash, dHash, colour grid): {1000 * hash_all(samples):.2f} ms/image")
    default = ImageDedup.Params()
    settings = [("phash", ImageDedup.Params(max_distance=k)) for k in range(0, 17, 2)]
    settings += [("phash+dhash<=12", ImageDedup.Params(max_distance=k, second_hash="dhash", second_max_distance=12))
                 for k in (6, 8, 10, 12)]
    print(f"\n{'hash':<16} {'max_dist':>8} {'precision':>9} {'recall':>7} {'F1':>6} {'dropped':>8} {'wrong':>6} "
          f"{'cluster ms/img':>14}")
    for name, params in settings:
        result, _ = evaluate(items, samples, params)
        marker = "  <- default" if params == default else ""
        print(f"{name:<16} {params.max_distance:>8} {result.precision:>9.3f} {result.recall:>7.3f} {result.f1:>6.3f} "
              f"{result.dropped:>8} {result.wrong_drops:>6} {1000 * result.seconds / len(items):>14.3f}{marker}")

    result, losers = evaluate(items, samples, default)
    print(f"\nrecall by copy kind at the default (max_distance={default.max_distance}): "
          "share of copies merged with their base")
    for variant in sorted({item.variant for item in items} - {"same_layout"}):
        indices = [i for i, item in enumerate(items) if item.variant == variant]
        merged = sum(_same_cluster(losers, i, _original_of(items, i)) for i in indices)
        print(f"  {variant:<18} {merged / len(indices):.3f}")
    if args.beam:
        beam_losers = run_beam_stage(samples_of(items), default)  # unhashed: the stage hashes them itself
        print(f"\nBeam stage agrees with the in-memory clusters: {beam_losers == losers}")
    return 0


def _original_of(items: list[Item], index: int) -> int:
    return next(i for i, item in enumerate(items) if item.group == items[index].group and item.variant == "original")


def _same_cluster(losers: dict[str, str], a: int, b: int) -> bool:
    key_a, key_b = f"{a:06d}", f"{b:06d}"
    return losers.get(key_a, key_a) == losers.get(key_b, key_b)


if __name__ == "__main__":
    sys.exit(main())
