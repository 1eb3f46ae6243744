"""Politeness on a hostile, skewed loopback web: curate beside img2dataset.

Four hosts, each its own loopback address (so each is a host to both tools):

  A 127.0.0.2  half of the rows; answers 429 with `Retry-After: 1` to any
               request above `--limit-concurrent` in flight or `--limit-rate`
               per second (the request is still counted as "over the limit")
  B 127.0.0.3  dead: accepts connections and never answers
  C 127.0.0.4  slow: drips each image over `--slow-seconds`
  D 127.0.0.5  healthy

The URL list is sorted by host, as real lists sorted by domain are.  Both
tools run with the same processes and threads; img2dataset from a virtualenv
of its own (see throughput.py).  Reported per tool: rows succeeded per host,
429s, requests to A above its limit, connections to the dead host, wall time.

    .venv/bin/python benchmarks/politeness.py --rows 600
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import img2dataset_venv  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOSTS = {"A": "127.0.0.2", "B": "127.0.0.3", "C": "127.0.0.4", "D": "127.0.0.5"}
SHARE = {"A": 0.5, "B": 1 / 6, "C": 1 / 6, "D": 1 / 6}


def jpeg(index: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), ((index * 37) % 256, (index * 91) % 256, (index * 13) % 256)).save(out, "JPEG")
    return out.getvalue()


class Web:
    """The four hosts on one asyncio loop in a thread, with counters."""

    def __init__(self, limit_concurrent: int, limit_rate: int, slow_seconds: float):
        self.limit_concurrent, self.limit_rate, self.slow_seconds = limit_concurrent, limit_rate, slow_seconds
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.in_flight = 0
        self.recent: list[float] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0

    def reset(self) -> None:
        self.counts = defaultdict(Counter)

    async def _serve(self, name: str, reader, writer) -> None:
        self.counts[name]["connections"] += 1
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                if name == "B":
                    await asyncio.sleep(3600)
                path = request.split(b" ", 2)[1].decode()
                await self._answer(name, path, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(self, name: str, path: str, writer) -> None:
        self.counts[name]["requests"] += 1
        body = jpeg(int(path.strip("/").split(".")[0] or 0))
        if name == "A":
            now = time.monotonic()
            self.recent = [t for t in self.recent if now - t < 1.0] + [now]
            self.in_flight += 1
            self.counts[name]["peak_concurrent"] = max(self.counts[name]["peak_concurrent"], self.in_flight)
            self.counts[name]["peak_rate"] = max(self.counts[name]["peak_rate"], len(self.recent))
            try:
                if self.in_flight > self.limit_concurrent or len(self.recent) > self.limit_rate:
                    self.counts[name]["over_limit"] += 1
                    writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    return
                await asyncio.sleep(0.02)
            finally:
                self.in_flight -= 1
        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        if name == "C":
            writer.write(head)
            for start in range(0, len(body), max(1, len(body) // 10)):
                writer.write(body[start:start + max(1, len(body) // 10)])
                await writer.drain()
                await asyncio.sleep(self.slow_seconds / 10)
            return
        writer.write(head + body)
        await writer.drain()

    def start(self) -> "Web":
        ready = threading.Event()

        async def main():
            first = await asyncio.start_server(lambda r, w: self._serve("A", r, w), HOSTS["A"], 0)
            self.port = first.sockets[0].getsockname()[1]
            for name in ("B", "C", "D"):
                await asyncio.start_server(lambda r, w, n=name: self._serve(n, r, w), HOSTS[name], self.port)
            ready.set()
            await asyncio.Event().wait()

        threading.Thread(target=lambda: self.loop.run_until_complete(main()), daemon=True).start()
        ready.wait(10)
        return self

    def url(self, name: str, index: int) -> str:
        return f"http://{HOSTS[name]}:{self.port}/{index}.jpg"


def url_list(web: Web, rows: int, path: Path) -> dict[str, str]:
    urls, host_of = [], {}
    index = 0
    for name in sorted(HOSTS):
        for _ in range(round(rows * SHARE[name])):
            url = web.url(name, index)
            urls.append(url)
            host_of[url] = name
            index += 1
    pq.write_table(pa.table({"url": urls, "caption": [f"an image number {i}" for i in range(len(urls))]}), path)
    return host_of


def run_img2dataset(command: Path, urls: Path, out: Path, args) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    subprocess.run([
        str(command), "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
        "--caption_col", "caption", "--output_format", "webdataset", "--output_folder", str(out),
        "--processes_count", str(args.processes), "--thread_count", str(args.threads),
        "--distributor", "multiprocessing", "--number_sample_per_shard", "100", "--image_size", "64",
        "--timeout", str(args.timeout), "--retries", "0", "--enable_wandb", "False", "--extract_exif", "False",
    ], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    return time.monotonic() - start


def run_curate(urls: Path, out: Path, args) -> float:
    shutil.rmtree(out, ignore_errors=True)
    recipe = out.parent / "politeness-recipe.yaml"
    recipe.write_text(
        "name: politeness\n"
        f"download: {{timeout: {args.timeout}, threads: {args.threads}}}\n"
        "resize: {image_size: 64}\noutput: {samples_per_shard: 100}\nstages: []\n"
    )
    start = time.monotonic()
    subprocess.run([
        sys.executable, "-m", "pipeline.cli", "run", "--recipe", str(recipe), "--input", str(urls),
        "--output", str(out), "--allow-private-network", f"--direct_num_workers={args.processes}",
        "--direct_running_mode=multi_processing",
    ], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def successes(tool: str, out: Path, host_of: dict[str, str]) -> Counter:
    table = pq.ParquetDataset(sorted(str(p) for p in (out / "shards" if tool == "curate" else out).glob("*.parquet"))).read()
    rows = table.to_pylist()
    ok = [r for r in rows if tool == "curate" or r.get("status") == "success"]
    return Counter(host_of[r["url"]] for r in ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument("--limit-concurrent", type=int, default=4)
    parser.add_argument("--limit-rate", type=int, default=20)
    parser.add_argument("--slow-seconds", type=float, default=2.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/curate-politeness"))
    parser.add_argument("--only", choices=["curate", "img2dataset"])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    web = Web(args.limit_concurrent, args.limit_rate, args.slow_seconds).start()
    host_of = url_list(web, args.rows, args.work / "urls.parquet")
    totals = Counter(host_of.values())
    results = {}
    for tool in ("img2dataset", "curate"):
        if args.only and tool != args.only:
            continue
        web.reset()
        out = args.work / f"out-{tool}"
        if tool == "curate":
            seconds = run_curate(args.work / "urls.parquet", out, args)
        else:
            seconds = run_img2dataset(img2dataset_venv(args.work / "img2dataset-venv"), args.work / "urls.parquet", out, args)
        ok = successes(tool, out, host_of)
        results[tool] = {
            "seconds": round(seconds, 1),
            "succeeded": {name: f"{ok[name]}/{totals[name]}" for name in sorted(HOSTS)},
            "A_429s": web.counts["A"]["over_limit"],
            "A_requests": web.counts["A"]["requests"],
            "A_peak_concurrent": web.counts["A"]["peak_concurrent"],
            "A_peak_rate_per_s": web.counts["A"]["peak_rate"],
            "B_connections": web.counts["B"]["connections"],
        }
        print(tool, json.dumps(results[tool]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
