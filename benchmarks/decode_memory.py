"""Peak memory of decoding big, tiny-on-disk images on many threads (issue: decode budget).

Generates COUNT 9000x9000 16-bit grey PNGs (~160 KB each: a smooth gradient
compresses well), then, in a fresh process, runs `process_image` on all of
them with THREADS threads and prints the process's peak RSS.  Nothing large is
kept in the repository.

    .venv/bin/python benchmarks/decode_memory.py [--count 8] [--threads 8] [--mode I;16] [--budget BYTES]
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.engine import malloc  # noqa: E402

SIDE = 9000


def make_png(path: Path, mode: str, seed: int) -> None:
    ramp = (np.arange(SIDE, dtype=np.uint32) * 7 + seed) % 65536
    if mode == "I;16":
        img = Image.fromarray(np.broadcast_to(ramp.astype(np.uint16), (SIDE, SIDE)).copy())
    else:  # a palette image: one byte a pixel on decode, four once converted
        img = Image.fromarray(np.broadcast_to((ramp % 256).astype(np.uint8), (SIDE, SIDE)).copy()).convert("P")
    out = io.BytesIO()
    img.save(out, "PNG")
    path.write_bytes(out.getvalue())


def measure(folder: Path, threads: int, budget: int | None) -> None:
    from pipeline.media.imaging import ImageRejected, ResizeParams, process_image

    params = ResizeParams(max_pixels=SIDE * SIDE, **({"decode_budget_bytes": budget} if budget else {}))
    blobs = [path.read_bytes() for path in sorted(folder.glob("*.png"))]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def one(data: bytes) -> str:
        try:
            return f"{process_image(data, params).width}px"
        except ImageRejected as err:
            return err.reason

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(one, blobs))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{len(blobs)} images ({sum(map(len, blobs)) // len(blobs) // 1024} KB each), {threads} threads: "
          f"peak RSS {peak / 2**20:.2f} GiB (before decoding {baseline / 2**20:.2f} GiB), "
          f"{time.monotonic() - started:.1f} s, outcomes {sorted(set(outcomes))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--mode", choices=["I;16", "P"], default="I;16")
    parser.add_argument("--budget", type=int, default=None, help="resize.decode_budget_bytes (default: its default)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the fresh child process
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.threads, args.budget)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.count):
            make_png(Path(tmp) / f"{index}.png", args.mode, index)
        command = [sys.executable, __file__, "--measure", tmp, "--threads", str(args.threads)]
        # As a worker runs: with the pipeline's cap on malloc arenas.
        env = {**os.environ, malloc.ENV: malloc.arena_max()}
        subprocess.run(command + (["--budget", str(args.budget)] if args.budget else []), check=True, env=env)


if __name__ == "__main__":
    main()
