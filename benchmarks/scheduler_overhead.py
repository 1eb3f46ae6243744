"""CPU per row of the download scheduling itself (HostScheduler + HostPolicy + the thread pool), no network.

    .venv/bin/python benchmarks/scheduler_overhead.py --rows 8000 --hosts 64 --threads 16 --fetch-seconds 0.002

Each row's "fetch" sleeps `--fetch-seconds` (0: returns at once) and reports
to the host policy as a real fetch does; what the process spends beyond that
is the per-host queues, slots, futures and hand-offs between threads.
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from pipeline.core.records import Sample
from pipeline.media.host_scheduler import HostScheduler, InFlightLimit
from pipeline.media.politeness import HostPolicy, PolitenessParams, host_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--fetch-seconds", type=float, default=0.0)
    args = parser.parse_args()
    samples = [Sample(key=f"{i:09d}", shard_id=0, url=f"http://127.0.0.{i % args.hosts + 1}/{i}.jpg", caption="c")
               for i in range(args.rows)]
    policy = HostPolicy(PolitenessParams(per_host_rate=0))

    def fetch(sample: Sample) -> Sample:
        if args.fetch_seconds:
            time.sleep(args.fetch_seconds)
        policy.finish(host_of(sample.url), None, 200, None)
        return sample

    with ThreadPoolExecutor(args.threads) as pool:
        scheduler = HostScheduler(policy, pool, fetch, InFlightLimit(args.threads, args.threads), 0, 60.0)
        cpu, wall = time.process_time(), time.monotonic()
        done = sum(1 for _ in scheduler.run(samples))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    print(f"{done} rows, {args.hosts} hosts, {args.threads} threads, fetch {args.fetch_seconds * 1000:g} ms: "
          f"{1000 * cpu / done:.3f} CPU ms/row, {wall:.2f} s wall")


if __name__ == "__main__":
    main()
