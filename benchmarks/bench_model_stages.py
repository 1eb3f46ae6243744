"""Images per second of the open_clip model stages on this machine's CPU.

Models are randomly initialised (no weights can be downloaded here) and saved
as checkpoints that the stages load through their ordinary path
(`pretrained=<file>`, `model_config=<json>` for the tiny ones).  Random weights
cost the same compute as trained ones, so the figures hold for real models of
the same architecture; only the captions' lengths differ (a random CoCa rarely
ends a caption early, so recaption is timed at its longest).

    python benchmarks/bench_model_stages.py [--batch-size 32] [--batches 3] [--vit-b-32] [--coca-b-32] [--match TEXT]

`--vit-b-32` adds clip_score and aesthetic with ViT-B-32 (writes a 300 MB fp16
checkpoint to a temporary directory); `--coca-b-32` adds recaption with
coca_ViT-B-32 (slow on a CPU: give it a small --batch-size).  Not a test.
The ONNX stages (nsfw's NudeNet, watermark's text detector) are timed by
`bench_onnx_stages.py`, in CPU time per image.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "filters"))

import tiny_openclip  # noqa: E402

from filters.aesthetic import Aesthetic  # noqa: E402
from pipeline.core.stage import SampleStage  # noqa: E402
from filters.clip_score import ClipScore  # noqa: E402
from filters.recaption import Recaption  # noqa: E402
from pipeline.core.records import Sample  # noqa: E402


def jpeg(seed: int, size: int = 256) -> bytes:
    """A smooth image with noise, JPEG-encoded: decodes like a resized web photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([127 + 100 * np.sin(x / rng.uniform(10, 60) + c) * np.cos(y / rng.uniform(10, 60))
                     for c in range(3)], -1)
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def samples(count: int, images: list[bytes]) -> list[Sample]:
    return [Sample(key=f"{i:09d}", shard_id=0, url=f"http://bench/{i}.jpg",
                   caption=f"a photo of object number {i} on a table", image=images[i % len(images)])
            for i in range(count)]


def images_per_second(stage: SampleStage, batch_size: int, batches: int, images: list[bytes]) -> float:
    stage.setup()
    stage.score(samples(batch_size, images))  # warm-up: lazy loads, allocator
    start = time.perf_counter()
    for _ in range(batches):
        stage.score(samples(batch_size, images))
    return batch_size * batches / (time.perf_counter() - start)


def save_random_builtin(name: str, directory: Path) -> str:
    """A randomly initialised built-in architecture saved as an fp16 state_dict (no download)."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    path = directory / f"{name}-random.pt"
    torch.save({key: value.half() for key, value in model.state_dict().items()}, path)
    return str(path)


def clip_params(model: str, checkpoint: str, config: str | None) -> dict:
    return {"model": model, "pretrained": checkpoint, "model_config": config}


def stages(args, directory: Path) -> list[tuple[str, SampleStage]]:
    tiny_clip = tiny_openclip.save_tiny_clip(directory / "tiny")
    tiny_coca = tiny_openclip.save_tiny_coca(directory / "tiny")
    tiny = clip_params(tiny_clip.model, tiny_clip.pretrained, tiny_clip.model_config)
    tiny_head = directory / "tiny-head.pth"
    tiny_openclip.save_linear_head(tiny_head, [32, 16, 1])
    coca = {"coca_model": tiny_coca.model, "coca_pretrained": tiny_coca.pretrained,
            "coca_model_config": tiny_coca.model_config, "max_length": 20}
    runs = [
        ("clip_score tiny", ClipScore(ClipScore.Params(**tiny))),
        ("aesthetic tiny (computes embeddings)", Aesthetic(Aesthetic.Params(head_path=str(tiny_head), **tiny))),
        ("recaption tiny CoCa beam_search", Recaption(Recaption.Params(**coca, **tiny))),
        ("recaption tiny CoCa top_p", Recaption(Recaption.Params(**coca, generation="top_p", **tiny))),
    ]
    if args.vit_b_32:
        vit = clip_params("ViT-B-32", save_random_builtin("ViT-B-32", directory), None)
        head = directory / "vit-head.pth"
        tiny_openclip.save_linear_head(head, [512, 1024, 128, 64, 16, 1])  # the LAION v2 head's shape
        runs += [
            ("clip_score ViT-B-32", ClipScore(ClipScore.Params(**vit))),
            ("clip_score ViT-B-32 + store_embeddings", ClipScore(ClipScore.Params(store_embeddings=True, **vit))),
            ("aesthetic ViT-B-32 (computes embeddings)", Aesthetic(Aesthetic.Params(head_path=str(head), **vit))),
        ]
    if args.coca_b_32:
        coca_b32 = {"coca_model": "coca_ViT-B-32", "coca_pretrained": save_random_builtin("coca_ViT-B-32", directory),
                    "max_length": 20}
        runs.append(("recaption coca_ViT-B-32 beam_search (+ tiny CLIP)", Recaption(Recaption.Params(**coca_b32, **tiny))))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--vit-b-32", action="store_true")
    parser.add_argument("--coca-b-32", action="store_true")
    parser.add_argument("--match", default="", help="run only the stages whose label contains this")
    args = parser.parse_args()
    import torch

    images = [jpeg(seed) for seed in range(16)]
    print(f"torch threads: {torch.get_num_threads()}, batch size {args.batch_size}, {args.batches} timed batches")
    with tempfile.TemporaryDirectory(prefix="bench-model-stages-") as tmp:
        for label, stage in stages(args, Path(tmp)):
            if args.match not in label:
                continue
            rate = images_per_second(stage, args.batch_size, args.batches, images)
            print(f"{label:55s} {rate:9.3g} images/s  ({1 / rate:.3g} s/image)", flush=True)


if __name__ == "__main__":
    main()
