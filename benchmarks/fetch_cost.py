"""CPU per request of the fetch alone: curate's two fetchers, and plain aiohttp, on the throughput web.

No decode, no Beam: every URL of the throughput benchmark's generated web
(nginx on loopback, rows spread over `--hosts` addresses) fetched once in this
process, and the process's CPU time (user + system, all threads) divided by
the rows.  Contenders, interleaved over `--runs` rounds:

  threads      pipeline.media.download.Downloader (urllib3) on `--threads` threads
  async        pipeline.media.async_download.AsyncDownloader, `--in-flight` at once
  aiohttp      plain aiohttp, no guards and no body budget: what the transport itself costs

    .venv/bin/python benchmarks/fetch_cost.py --count 4000 --work /tmp/curate-throughput
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import Nginx, generate_web  # noqa: E402

from pipeline.media.body_budget import BodyBudget  # noqa: E402
from pipeline.media.download import Downloader, DownloadParams  # noqa: E402

PARAMS = DownloadParams(allow_private_network=True, retries=0)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fetch_with_threads(urls: list[str], threads: int) -> int:
    downloader = Downloader(PARAMS)
    budget = BodyBudget(PARAMS.body_budget_bytes)

    def one(url: str) -> bool:
        hold = budget.hold()
        try:
            return downloader.fetch(url, hold=hold).ok
        finally:
            hold.release()

    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(one, urls))
    downloader.close()
    return done


def fetch_with_event_loop(urls: list[str], in_flight: int) -> int:
    from pipeline.media.async_download import AsyncDownloader

    async def run() -> int:
        downloader = AsyncDownloader(PARAMS)
        budget = BodyBudget(PARAMS.body_budget_bytes)
        slots = asyncio.Semaphore(in_flight)

        async def one(url: str) -> bool:
            async with slots:
                hold = budget.hold()
                try:
                    return (await downloader.fetch(url, hold=hold)).ok
                finally:
                    hold.release()

        done = sum(await asyncio.gather(*(one(url) for url in urls)))
        await downloader.close()
        return done

    return asyncio.run(run())


def fetch_with_plain_aiohttp(urls: list[str], in_flight: int) -> int:
    import aiohttp

    async def run() -> int:
        slots = asyncio.Semaphore(in_flight)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def one(url: str) -> bool:
                async with slots, session.get(url, allow_redirects=False) as response:
                    body = await response.read()
                    return response.status == 200 and bool(body)

            return sum(await asyncio.gather(*(one(url) for url in urls)))

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=4000, help="URLs (and images generated)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path("/tmp/curate-throughput"))
    args = parser.parse_args()
    specs = generate_web(args.work / "web", args.count, seed=0, processes=2)
    contenders = {
        "threads": lambda urls: fetch_with_threads(urls, args.threads),
        "async": lambda urls: fetch_with_event_loop(urls, args.in_flight),
        "aiohttp": lambda urls: fetch_with_plain_aiohttp(urls, args.in_flight),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    with Nginx(args.work / "web", args.work / "nginx-fetch", workers=1, hosts=args.hosts) as server:
        urls = [server.url(i, spec.name) for i, spec in enumerate(specs)]
        for round_number in range(1, args.runs + 1):
            for name, fetch in contenders.items():
                cpu, wall = _cpu_seconds(), time.perf_counter()
                done = fetch(urls)
                cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
                results[name].append((cpu * 1000 / len(urls), len(urls) / wall))
                print(f"round {round_number}: {name:8} {done}/{len(urls)} ok, {cpu * 1000 / len(urls):.3f} CPU ms/row, "
                      f"{len(urls) / wall:.0f} rows/s", flush=True)
    print(f"\n{'fetcher':10} {'CPU ms/row (median)':>20} {'rows/s (median)':>16}")
    for name, runs in results.items():
        print(f"{name:10} {statistics.median(c for c, _ in runs):20.3f} {statistics.median(r for _, r in runs):16.0f}")


if __name__ == "__main__":
    main()
