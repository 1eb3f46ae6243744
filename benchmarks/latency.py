"""Downloading from a far-away web: curate's defaults against network latency, beside img2dataset's.

A loopback asyncio server answers every request after an injected delay
(0 ms, then 50 ms, 300 ms, 1 s; with `--slow-hosts` a share of the hosts
`--slow-factor` times later) with one of a few small generated photos
(512x384 JPEGs).  The rows are spread over `--hosts` loopback addresses
(127.0.1.x), so the per-host politeness limits are not what bounds the rate:
what is measured is how well the tool hides latency.  The server only sleeps
and writes bytes it holds, so it is never the bottleneck.

For each latency: curate with its defaults (a recipe with no stages; only
`--allow-private-network` for loopback), and img2dataset from a virtualenv of
its own (throughput.py's img2dataset_venv) with its defaults but for
the output format and `--image_size` (curate's), in each `--img2dataset`
configuration of processes x threads (its true defaults are 1 x 256; issue
18 measured 2 x 32 as "its defaults"; by default `--processes` x 256).
Reported per run: rows written, wall seconds, rows/s over the wall time and
over the server's span (first to last request: start-up excluded), CPU
seconds per row of the whole process tree (user + system: less distorted by
other load on a shared machine than wall time), peak PSS of the whole process
tree (every thread's children; PSS so that forked workers' shared pages count
once), the load average, and curate's last progress line (requests in flight,
network vs decode share, CPU).

    .venv/bin/python benchmarks/latency.py --rows 2000
    # before/after: curate from several source trees, interleaved in the same rounds
    .venv/bin/python benchmarks/latency.py --rows 6000 --runs 3 --tree /tmp/before --tree .
    # img2dataset as issue 18 ran it (2 x 32), at its true defaults (1 x 256), and 2 x 256
    .venv/bin/python benchmarks/latency.py --rows 6000 --img2dataset 2x32 --img2dataset 1xdefault --img2dataset 2xdefault
    # per-worker timelines (requests in flight, limit, CPU every second) in each curate result
    .venv/bin/python benchmarks/latency.py --rows 6000 --latencies 0,1 --img2dataset-at '' --timeline
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import children, pss_kib  # noqa: E402
from throughput import ImageSpec, curate_name, img2dataset_venv, render, source_trees  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IMAGES = 16


class SlowWeb:
    """Hosts 127.0.1.1.. on one port, answering each request after `delay` seconds (the first
    `slow_hosts` of them after `delay * slow_factor`)."""

    def __init__(self, hosts: int, slow_hosts: int = 0, slow_factor: float = 1.0):
        self.addresses = [f"127.0.1.{index + 1}" for index in range(hosts)]
        self.slow = frozenset(self.addresses[:slow_hosts])
        self.slow_factor = slow_factor
        self.bodies = [render(ImageSpec(f"{i}.jpg", "photo", 512, 384, "JPEG", 85, False, i)) for i in range(IMAGES)]
        self.delay, self.port = 0.0, 0
        self.first = self.last = 0.0
        self.requests = 0
        self._loop = asyncio.new_event_loop()

    def reset(self, delay: float) -> None:
        self.delay, self.requests, self.first, self.last = delay, 0, 0.0, 0.0

    async def _serve(self, reader, writer) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                now = time.monotonic()
                self.first, self.last, self.requests = self.first or now, now, self.requests + 1
                index = int(request.split(b" ", 2)[1].strip(b"/").split(b".")[0] or 0)
                body = self.bodies[index % IMAGES]
                slow = writer.get_extra_info("sockname")[0] in self.slow
                await asyncio.sleep(self.delay * (self.slow_factor if slow else 1.0))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body)
                             + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    def start(self) -> "SlowWeb":
        ready = threading.Event()

        async def main():
            first = await asyncio.start_server(self._serve, self.addresses[0], 0, backlog=1024)
            self.port = first.sockets[0].getsockname()[1]
            for address in self.addresses[1:]:
                await asyncio.start_server(self._serve, address, self.port, backlog=1024)
            ready.set()
            await asyncio.Event().wait()

        threading.Thread(target=lambda: self._loop.run_until_complete(main()), daemon=True).start()
        if not ready.wait(30):
            sys.exit("the loopback server did not start")
        return self

    def write_urls(self, rows: int, path: Path) -> None:
        # Rows cycle over the hosts, as a list shuffled across domains would.
        urls = [f"http://{self.addresses[i % len(self.addresses)]}:{self.port}/{i}.jpg" for i in range(rows)]
        pq.write_table(pa.table({"url": urls, "caption": [f"a photo number {i}" for i in range(rows)]}), path)


class PeakMemory:
    """The largest summed PSS of a process and its descendants, sampled every 0.2 s.

    PSS, not RSS: forked worker processes share their parent's pages, which a
    sum of RSS would count once per process.  Descendants of every thread:
    Beam starts its workers from a thread, not the main one."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, 1024 * sum(pss_kib(pid) for pid in (self.pid, *children(self.pid))))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class WorkerTimeline:
    """Each download worker's progress file (OUTPUT/_work/progress-*.json), read every second while curate
    runs: when it was written, rows done, requests in flight, the limit, CPU cores.  Medians hid a limit
    stuck at the start in some runs (benchmarks/README.md, "Latency", session 10); a timeline shows it."""

    def __init__(self, work_dir: Path):
        self.work_dir, self.samples, self._start = work_dir, {}, time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for path in self.work_dir.glob("progress-*.json"):
                try:
                    status = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue  # being replaced
                worker = self.samples.setdefault(path.stem.rsplit("-", 1)[-1], [])
                if not worker or worker[-1]["at"] != status.get("at"):
                    worker.append({"s": round(time.monotonic() - self._start, 1), "at": status.get("at"),
                                   **{key: status.get(key) for key in ("rows", "in_flight", "limit", "cpu_cores")}})

    def stop(self) -> dict[str, list[dict]]:
        self._stop.set()
        self._thread.join()
        return {worker: [{k: v for k, v in sample.items() if k != "at"} for sample in samples]
                for worker, samples in self.samples.items()}


def timed(command: list[str], log: Path, env: dict[str, str], cwd: Path = REPO) -> tuple[float, int, float]:
    """Wall seconds, peak PSS (all processes) and CPU seconds (of every process of the tree that was waited for)."""
    start, cpu_before = time.monotonic(), _children_cpu()
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        memory = PeakMemory(process.pid)
        status = process.wait()
    seconds, peak = time.monotonic() - start, memory.stop()
    if status != 0:
        sys.exit(f"{command[0]} failed (exit {status}); see {log}")
    return seconds, peak, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_curate(urls: Path, work: Path, args, tree: Path = REPO) -> dict:
    out = work / "out-curate"
    shutil.rmtree(out, ignore_errors=True)
    recipe = work / "latency-recipe.yaml"
    recipe.write_text("name: latency\nstages: []\n")  # curate's defaults: download.*, resize.*, output.*
    overrides = [item for pair in args.set for item in ("--set", pair)]
    log = work / "curate.log"
    timeline = WorkerTimeline(out / "_work") if args.timeline else None
    seconds, peak, cpu = timed([
        sys.executable, "-m", "pipeline.cli", "run", "--recipe", str(recipe), "--input", str(urls), "--output",
        str(out), "--allow-private-network", *overrides, f"--direct_num_workers={args.processes}",
        "--direct_running_mode=multi_processing",
    ], log, {**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
    kept = json.loads((out / "report" / "audit.json").read_text())["counts"]["kept"]
    progress = [line.strip() for line in log.read_text().splitlines()
                if re.search(r"download: [1-9]\d*/\d+ worker\(s\) active", line)]  # while downloading
    in_flight = [int(n) for line in progress for n in re.findall(r"(\d+) in flight", line)]
    return {"rows": kept, "seconds": seconds, "cpu_s": cpu, "peak_pss_mb": peak >> 20,
            "most_in_flight": max(in_flight, default=None), "last_progress": progress[-1:],
            **({"timeline": timeline.stop()} if timeline else {})}


def run_img2dataset(urls: Path, work: Path, args, config: tuple[int, int | None]) -> dict:
    """config: (processes, threads per process; None for img2dataset's own default, 256)."""
    processes, threads = config
    out = work / "out-img2dataset"
    shutil.rmtree(out, ignore_errors=True)
    command = img2dataset_venv(args.img2dataset_venv or work / "img2dataset-venv")
    seconds, peak, cpu = timed([
        str(command), "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url", "--caption_col",
        "caption", "--output_format", "webdataset", "--output_folder", str(out), "--processes_count",
        str(processes), "--distributor", "multiprocessing", "--image_size", "256", "--enable_wandb", "False",
        *(["--thread_count", str(threads)] if threads else []),
    ], work / "img2dataset.log", {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    rows = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return {"rows": rows, "seconds": seconds, "cpu_s": cpu, "peak_pss_mb": peak >> 20}


def measure(tool: str, web: SlowWeb, delay: float, urls: Path, args) -> dict:
    """tool: "img2dataset PxT" (`--img2dataset`), or "curate" / "curate [tree]" (run from that source tree)."""
    web.reset(delay)
    load = os.getloadavg()[0]
    if tool.startswith("curate"):
        result = run_curate(urls, args.work, args, args.trees[tool])
    else:
        result = run_img2dataset(urls, args.work, args, args.img2dataset_configs[tool])
    span = max(web.last - web.first + delay, 1e-9)  # the last request is answered `delay` after it arrives
    result.update(tool=tool, latency_ms=round(delay * 1000), load_before=round(load, 2),
                  load_after=round(os.getloadavg()[0], 2), rows_per_s=round(result["rows"] / result["seconds"], 1),
                  server_span_rows_per_s=round(web.requests / span, 1), seconds=round(result["seconds"], 1),
                  cpu_ms_per_row=round(1000 * result.pop("cpu_s") / max(result["rows"], 1), 1))
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--slow-hosts", type=float, default=0.0,
                        help="share of the hosts that answer `--slow-factor` times later (default 0)")
    parser.add_argument("--slow-factor", type=float, default=3.0)
    parser.add_argument("--latencies", default="0,0.05,0.3,1.0", help="seconds, comma-separated; 0 first")
    parser.add_argument("--img2dataset-at", default="0.3", help="latencies to run img2dataset at ('' for none)")
    parser.add_argument("--img2dataset", action="append", default=[], metavar="PxT",
                        help="an img2dataset configuration: P processes x T threads per process, T 'default' for "
                             "its own (256); repeatable (default: --processes x default)")
    parser.add_argument("--set", action="append", default=[], help="a curate --set override (default: none)")
    parser.add_argument("--img2dataset-venv", type=Path, help="default: WORK/img2dataset-venv (created once)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/curate-latency"))
    parser.add_argument("--runs", type=int, default=1, help="rounds (interleaved); medians are reported")
    parser.add_argument("--timeline", action="store_true",
                        help="also record each curate worker's rows, requests in flight, limit and CPU every second")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="source tree to run curate from (default: this one); repeat to compare trees")
    args = parser.parse_args()
    args.trees = {curate_name("curate", label): path for label, path in source_trees(args.tree).items()}
    args.work.mkdir(parents=True, exist_ok=True)
    web = SlowWeb(args.hosts, round(args.hosts * args.slow_hosts), args.slow_factor).start()
    urls = args.work / "urls.parquet"
    web.write_urls(args.rows, urls)
    i2d_at = {float(x) for x in args.img2dataset_at.split(",") if x}
    runs = [(tool, delay) for delay in (float(x) for x in args.latencies.split(",")) for tool in args.trees]
    args.img2dataset_configs = img2dataset_configs(args.img2dataset or [f"{args.processes}xdefault"])
    runs += [(tool, delay) for delay in sorted(i2d_at) for tool in args.img2dataset_configs]
    results = []
    for round_number in range(args.runs):
        shift = round_number % len(runs)  # interleaved: no configuration always follows the same one
        for tool, delay in runs[shift:] + runs[:shift]:
            results.append({**measure(tool, web, delay, urls, args), "round": round_number + 1})
    print(json.dumps({"cpus": os.cpu_count(), "rows": args.rows, "processes": args.processes, "hosts": args.hosts,
                      "slow_hosts": len(web.slow), "slow_factor": args.slow_factor,
                      "results": results, "medians": medians(results)}, indent=2))


def img2dataset_configs(specs: list[str]) -> dict[str, tuple[int, int | None]]:
    """["2x32", "1xdefault"] -> {"img2dataset 2x32": (2, 32), "img2dataset 1x256": (1, None)}."""
    configs = {}
    for spec in specs:
        processes, _, threads = spec.partition("x")
        count = None if threads in ("", "default") else int(threads)
        configs[f"img2dataset {int(processes)}x{count or 256}"] = (int(processes), count)
    return configs


def medians(results: list[dict]) -> list[dict]:
    """Per tool and latency: median rates over the rounds, and curate's as a share of its 0 ms median."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for result in results:
        groups.setdefault((result["tool"], result["latency_ms"]), []).append(result)
    table = []
    for (tool, latency), group in sorted(groups.items()):
        table.append({"tool": tool, "latency_ms": latency, "runs": len(group),
                      **{name: statistics.median(r[name] for r in group)
                         for name in ("rows_per_s", "server_span_rows_per_s", "cpu_ms_per_row", "peak_pss_mb")}})
    for row in table:
        zero = next((other for other in table if other["tool"] == row["tool"] and other["latency_ms"] == 0), None)
        if zero and row["tool"].startswith("curate"):
            row["of_zero_latency"] = round(row["rows_per_s"] / zero["rows_per_s"], 2)
            row["of_zero_latency_span"] = round(row["server_span_rows_per_s"] / zero["server_span_rows_per_s"], 2)
        if row["tool"].startswith("curate"):  # against every img2dataset configuration at the same latency
            row.update({f"over {other['tool']}": round(row["rows_per_s"] / other["rows_per_s"], 2) for other in table
                        if other["tool"].startswith("img2dataset") and other["latency_ms"] == row["latency_ms"]})
    return table


if __name__ == "__main__":
    main()
