"""The `hashlist` stage: recall on altered copies of listed images, false matches, lookup throughput.

Listed images are generated pictures (the colour layouts and detail of
benchmarks/dedup_eval.py).  Their MD5 and PDQ go into a list; then each is
re-encoded as JPEG at qualities 50-95 and resized (0.5x, 0.75x, 1.5x), hashed
as the stage hashes a download, and looked up: recall is the share of copies
found within PDQ distance 31 (and their largest distance).  Unrelated images
(new layouts) and hard negatives (the same layout, other detail) must not
match: the false-match rate is over those.  Throughput: lookups per second
against a list of `--list-size` entries (the listed hashes plus random ones;
random PDQ hashes spread like real ones for the index's purpose, being near
uniform bit by bit).

    python benchmarks/hashlist_eval.py --listed 40 --unrelated 400 --list-size 1000000
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dedup_eval import SIZES, detail, encode, layout  # noqa: E402
from pipeline.media.hash_index import HASH_BYTES, PdqIndex, hashes_from_hex  # noqa: E402
from pipeline.media.hash_lists import hash_fields  # noqa: E402

MAX_PIXELS = 89_478_485
QUALITIES = (50, 65, 80, 95)
SCALES = (0.5, 0.75, 1.5)


def picture(rng: np.random.Generator) -> Image.Image:
    size = SIZES[int(rng.integers(0, len(SIZES)))]
    return detail(layout(rng, size), rng)


def altered_copies(image: Image.Image) -> dict[str, bytes]:
    copies = {f"jpeg{q}": encode(image, q) for q in QUALITIES}
    for scale in SCALES:
        size = (int(image.width * scale), int(image.height * scale))
        copies[f"resize{scale}"] = encode(image.resize(size, Image.Resampling.BICUBIC), 85)
    return copies


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@dataclass
class Evaluation:
    listed: list[dict]  # hash fields of each listed original
    copies: list[tuple[int, str, dict]]  # (listed index, alteration, hash fields)
    unrelated: list[dict]


def build(listed: int, unrelated: int, seed: int) -> Evaluation:
    rng = np.random.default_rng(seed)
    originals, copies, others = [], [], []
    for index in range(listed):
        background_seed = int(rng.integers(0, 2**31))
        image = detail(layout(np.random.default_rng(background_seed), SIZES[index % len(SIZES)]), rng)
        originals.append(hash_fields(png(image), MAX_PIXELS))
        copies += [(index, name, hash_fields(data, MAX_PIXELS)) for name, data in altered_copies(image).items()]
        # A hard negative: the same colour layout, other detail.
        other = detail(layout(np.random.default_rng(background_seed), SIZES[index % len(SIZES)]), rng)
        others.append(hash_fields(encode(other), MAX_PIXELS))
    others += [hash_fields(encode(picture(rng)), MAX_PIXELS) for _ in range(unrelated)]
    return Evaluation(originals, copies, others)


def distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def index_of(evaluation: Evaluation, max_distance: int, extra_random: int, seed: int) -> PdqIndex:
    listed = hashes_from_hex([fields["pdq"] for fields in evaluation.listed])
    fill = np.random.default_rng(seed + 1).integers(0, 256, (extra_random, HASH_BYTES), dtype=np.uint8)
    return PdqIndex(np.concatenate([listed, fill]), max_distance)


def evaluate(evaluation: Evaluation, max_distance: int = 31, min_quality: int = 50) -> dict:
    index = index_of(evaluation, max_distance, 0, 0)
    found = [index.nearest(bytes.fromhex(f["pdq"])) for _, _, f in evaluation.copies]
    hits = [r is not None and r[0] == i for (i, _, _), r in zip(evaluation.copies, found)]
    distances = [distance(evaluation.listed[i]["pdq"], f["pdq"]) for i, _, f in evaluation.copies]
    false = [index.nearest(bytes.fromhex(f["pdq"])) is not None for f in evaluation.unrelated
             if f["pdq_quality"] >= min_quality]
    return {
        "copies": len(hits),
        "recall": sum(hits) / len(hits),
        "max_copy_distance": max(distances),
        "unrelated": len(false),
        "false_matches": sum(false),
        "min_unrelated_distance": min(
            distance(o["pdq"], u["pdq"]) for o in evaluation.listed for u in evaluation.unrelated
        ),
        "low_quality_listed": sum(1 for f in evaluation.listed if f["pdq_quality"] < min_quality),
    }


def throughput(evaluation: Evaluation, list_size: int, queries: int = 2000) -> dict:
    start = time.perf_counter()
    index = index_of(evaluation, 31, list_size - len(evaluation.listed), 0)
    built = time.perf_counter() - start
    rng = np.random.default_rng(5)
    probes = [bytes.fromhex(f["pdq"]) for _, _, f in evaluation.copies]
    probes += [rng.integers(0, 256, HASH_BYTES, dtype=np.uint8).tobytes() for _ in range(queries - len(probes))]
    start = time.perf_counter()
    for probe in probes:
        index.nearest(probe)
    seconds = time.perf_counter() - start
    return {"list_size": len(index), "build_s": built, "lookups_per_s": len(probes) / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listed", type=int, default=40)
    parser.add_argument("--unrelated", type=int, default=400)
    parser.add_argument("--list-size", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    evaluation = build(args.listed, args.unrelated, args.seed)
    quality = evaluate(evaluation)
    print(f"{quality['copies']} altered copies of {args.listed} listed images (JPEG q{QUALITIES}, resize {SCALES}): "
          f"recall {quality['recall']:.3f} at PDQ <= 31, largest copy distance {quality['max_copy_distance']}")
    print(f"{quality['unrelated']} unrelated images (incl. {args.listed} same-layout hard negatives): "
          f"{quality['false_matches']} false matches; closest unrelated distance {quality['min_unrelated_distance']}")
    speed = throughput(evaluation, args.list_size)
    print(f"list of {speed['list_size']:,} PDQ hashes: index built in {speed['build_s']:.1f} s, "
          f"{speed['lookups_per_s']:,.0f} lookups/s (one process)")
    return 0 if quality["recall"] == 1.0 and quality["false_matches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
