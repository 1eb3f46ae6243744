"""Where curate's CPU goes per row: a sampled profile of `curate run`, launcher and workers.

The same loopback web as `throughput.py` (generated images served by nginx on
127.0.0.1; `--images` of them, cycled through `--count` rows with distinct
URLs), then, for `--count` rows and for 10 rows:

1. `curate run` with download + resize + write (`stages: []`, or the CPU
   filter chain with `--filters`: with cycled images, dedup drops the
   repeats), unprofiled, `--runs` times: CPU seconds of the command and its
   worker processes (user + system, from the kernel), wall clock, load average;
2. the same run under py-spy (`py-spy record --subprocesses`: the launcher
   and the Beam worker processes, every Python thread, only samples of
   threads that are running), whose stacks are sorted into what the row's CPU
   was spent on (`CATEGORIES`): each sample goes to the first category any of
   its frames belongs to, in the order of that list.

Per row means per row beyond the 10-row run: (count rows - 10 rows) / (count
- 10), which leaves out the start-up (imports, graph, worker processes) that
a long run pays once.  The table gives each category's sampled ms per row,
its share, and that share of the measured CPU per row (step 1).  What py-spy
cannot see is said apart: native threads (gRPC's, in the launcher and the
workers) have no Python stack, so the sampled total is below the measured one.

    .venv/bin/pip install py-spy==0.4.3          # the `bench` extra
    .venv/bin/python benchmarks/profile_rows.py --count 3000 --work /tmp/curate-profile
    .venv/bin/python benchmarks/profile_rows.py --tree /tmp/before --tree .    # before/after, same web

py-spy needs to ptrace the processes (root, or CAP_SYS_PTRACE in a container).
"""
from __future__ import annotations

import argparse
import collections
import json
import linecache
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (the generated web, nginx and the recipe are the throughput benchmark's)

# (name, test on one frame): a sample belongs to the first category one of its frames passes.
# A frame is (function, file, line); `source` is the text of that line (to tell a hash call).
HASH_CALL = re.compile(r"\b(hashlib|imagehash|pdqhash)\.")


@dataclass(frozen=True)
class Frame:
    function: str
    file: str
    line: int

    @property
    def source(self) -> str:
        return linecache.getline(self.file, self.line) if self.line else ""

    def is_in(self, *parts: str) -> bool:
        return any(part in self.file for part in parts)


IMPORTS = "start-up: imports, graph (left out of the shares)"
_START_UP_FUNCTIONS = ("_find_and_load", "_call_with_frames_removed", "build_pipeline", "Pipeline.to_runner_api",
                       "Pipeline.from_runner_api", "Pipeline.apply", "load_job_recipe")
CATEGORIES: list[tuple[str, callable]] = [
    (IMPORTS, lambda f: f.function in _START_UP_FUNCTIONS),
    ("shard write: images read back from _work/", lambda f: f.is_in("pipeline/engine/stored_images.py")),
    ("shard write: tar + parquet", lambda f: f.is_in("pipeline/engine/writers.py")
     or (f.is_in("pipeline/engine/write_outputs.py") and f.function.startswith("_Write"))),
    ("checkpoint write", lambda f: f.is_in("pipeline/engine/checkpoint.py") and "TaskCheckpoint" in f.function
     or f.is_in("pipeline/engine/checkpoint_records.py")),
    ("encode", lambda f: f.is_in("pipeline/media/imaging.py") and f.function == "encode_image"),
    ("hashes (SHA-256, MD5, pHash, PDQ)", lambda f: f.is_in("/imagehash/", "/pdqhash/")
     or (f.is_in("/pipeline/", "/filters/") and HASH_CALL.search(f.source) is not None)),
    ("decode + resize", lambda f: f.is_in("pipeline/media/imaging.py", "pipeline/media/decode_budget.py",
                                          "pipeline/media/image_integrity.py")),
    ("fetch (urllib3 or aiohttp, sockets)", lambda f: f.is_in(
        "/urllib3/", "/http/client.py", "/socket.py", "/ssl.py", "pipeline/media/download.py", "pipeline/media/dns_cache.py",
        "/aiohttp/", "/aiohappyeyeballs/", "/yarl/", "/multidict/", "/asyncio/", "pipeline/media/async_download.py",
        "pipeline/media/fetch_rules.py")),
    ("download threads, per-host scheduling", lambda f: f.is_in(
        "pipeline/media/host_scheduler.py", "pipeline/media/politeness.py", "pipeline/media/fetch_clock.py",
        "pipeline/media/watched_pool.py", "pipeline/media/event_loop_pool.py", "concurrent/futures/")),
    ("audit + report", lambda f: f.is_in("pipeline/engine/audit.py", "pipeline/tools/report", "/matplotlib/")),
    ("Beam (apache_beam, gRPC, protobuf, coders)", lambda f: f.is_in("/apache_beam/", "/grpc/", "/google/protobuf/")),
    ("other curate code", lambda f: f.is_in("/pipeline/", "/filters/")),
]
OTHER = "other (interpreter, threading, libraries)"
# A thread whose innermost frame is one of these is waiting, not computing: py-spy counts some such
# threads as active (a blocked queue get, a lock, a sleep, gRPC's completion-queue threads).
_WAITING_CALL = re.compile(r"\.acquire\(|\bsleep\(|\bwait\(|waitpid\(|\.get\((block|timeout)|\bselect\(|\.poll\(")
_WAITING_FUNCTIONS = ("_serve", "_run_channel_spin_thread.<locals>.channel_spin", "Popen._try_wait")


def waiting(frames: list[Frame]) -> bool:
    """No Python frame at all (a thread starting or ending, native code), or blocked in a wait."""
    if not frames:
        return True
    leaf = frames[-1]
    return leaf.function in _WAITING_FUNCTIONS or _WAITING_CALL.search(leaf.source) is not None


WORKER_COMMANDS = ("sdk_worker_main", "worker_forkserver")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):(?P<line>\d+)\)$")


def parse_frame(text: str) -> Frame | None:
    match = _FRAME.match(text)
    if match is None:
        return None
    return Frame(match["function"], match["file"], int(match["line"]))


def category_of(frames: list[Frame]) -> str:
    for name, belongs in CATEGORIES:
        if any(belongs(frame) for frame in frames):
            return name
    return OTHER


def read_samples(path: Path) -> dict[tuple[str, str], int]:
    """py-spy's raw (collapsed) stacks -> {(process role, category): samples}, waiting threads left out."""
    counts: dict[tuple[str, str], int] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        processes = [part for part in parts if part.startswith("process ")]  # the launcher, then descendants
        # A worker is Beam's worker command, or a child of the fork server (which has its command line).
        role = "workers" if any(name in processes[-1] for name in WORKER_COMMANDS) else "launcher"
        frames = [frame for frame in map(parse_frame, parts[len(processes) + 1:]) if frame is not None]
        if not waiting(frames):
            counts[(role, category_of(frames))] += int(count)
    return counts


def write_cycled_url_list(path: Path, server: throughput.Nginx, specs: list, rows: int) -> None:
    """`rows` URLs over the images and the server's hosts, each one distinct (a query string tells
    repeats apart).  Several hosts, as in throughput.py: on one, the per-host rate limit sets the pace."""
    table = [{"url": f"{server.url(i, specs[i % len(specs)].name)}?row={i}", "caption": throughput.caption_for(i)}
             for i in range(rows)]
    pq.write_table(pa.Table.from_pylist(table), path)


def profiled_run(setup: throughput.Setup, tree: Path, stages: list, rate: int, label: str,
                 rows: int) -> tuple[Path, float]:
    """`curate run` over `rows` rows under py-spy; the raw profile and the run's wall seconds."""
    kind = "filters" if stages else "download"
    recipe = setup.work / f"recipe-{kind}.yaml"
    throughput.write_recipe(recipe, setup, stages)
    out = setup.work / f"out-profile-{kind}"
    shutil.rmtree(out, ignore_errors=True)
    profile = setup.work / f"profile-{kind}-{rows}{'-' + label if label else ''}.txt"
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [
        py_spy, "record", "--subprocesses", "--threads", "--full-filenames", "--format", "raw",
        "--rate", str(rate), "--output", str(profile), "--",
        sys.executable, "-m", "pipeline.cli", "run", "--recipe", str(recipe),
        "--input", str(setup.url_lists[rows]), "--output", str(out), "--allow-private-network",
        f"--direct_num_workers={setup.processes}", "--direct_running_mode=multi_processing",
    ]
    start = time.perf_counter()
    with (setup.work / f"profile-{kind}.log").open("w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=tree, check=True)
    return profile, time.perf_counter() - start


def marginal(long: dict, short: dict) -> dict:
    """Samples of the long run beyond the short one's, by (role, category); never below 0."""
    return {key: max(count - short.get(key, 0), 0) for key, count in long.items()}


def breakdown(samples: dict[tuple[str, str], int], rate: int, rows: int, measured_ms: float) -> list[dict]:
    """One row per category: sampled ms per row by role, share, and that share of the measured CPU.

    Imports are start-up, which the 10-row run subtracts; what is left of them (the two runs' start-ups
    differ on a loaded machine) is shown but counts in no share.
    """
    total = sum(count for (_, name), count in samples.items() if name != IMPORTS)
    names = [name for name, _ in CATEGORIES] + [OTHER]
    table = []
    for name in names:
        by_role = {role: 1000 * samples.get((role, name), 0) / rate / rows for role in ("workers", "launcher")}
        share = 0.0 if name == IMPORTS else sum(samples.get((role, name), 0) for role in ("workers", "launcher")) / total
        table.append({"category": name, **by_role, "share": share, "of_measured_ms": share * measured_ms})
    return table


def print_table(title: str, table: list[dict], sampled_ms: float, measured: dict) -> None:
    print(f"\n{title}")
    print(f"{'category':48s} {'workers':>8s} {'launcher':>8s} {'share':>6s} {'ms/row':>7s}")
    for row in sorted(table, key=lambda r: -r["share"]):
        print(f"{row['category']:48s} {row['workers']:8.3f} {row['launcher']:8.3f} {100 * row['share']:5.1f}% "
              f"{row['of_measured_ms']:7.3f}")
    print(f"sampled {sampled_ms:.2f} ms/row (py-spy, Python threads); measured {measured['cpu_ms_per_row']:.2f} "
          f"ms/row unprofiled (kernel, all threads; runs {measured['cpu_ms']}), wall {measured['wall_s']} s, "
          f"10-row runs {measured['startup_wall_s']} s and {measured['startup_cpu_s']} CPU-s, load {measured['load']}")


def measure(setup: throughput.Setup, tree: Path, stages: list, runs: int, label: str) -> dict:
    """CPU per row beyond the start-up: (count rows - 10 rows) / (count - 10), medians of interleaved runs."""
    long, short = [], []
    for r in range(runs):
        long.append(throughput.run_curate(setup, tree, label, stages, setup.count, r))
        short.append(throughput.run_curate(setup, tree, label, stages, throughput.STARTUP_ROWS, r))
    cpu = [1000 * (m.cpu_seconds - s.cpu_seconds) / (setup.count - s.rows) for m, s in zip(long, short)]
    return {"cpu_ms_per_row": statistics.median(cpu), "cpu_ms": [round(v, 2) for v in cpu],
            "wall_s": [round(m.seconds, 2) for m in long], "startup_wall_s": [round(s.seconds, 2) for s in short],
            "startup_cpu_s": [round(s.cpu_seconds, 2) for s in short],
            "load": [round(m.load, 2) for m in long], "written": sorted({m.samples for m in long})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="rows")
    parser.add_argument("--images", type=int, default=1000, help="images generated, cycled through the rows")
    parser.add_argument("--runs", type=int, default=3, help="unprofiled runs for the measured CPU (median)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--hosts", type=int, default=64, help="loopback addresses the rows are spread over")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--filters", action="store_true", help="the CPU filter chain instead of stages: []")
    parser.add_argument("--tree", type=Path, action="append", default=[], help="source tree(s) to profile")
    parser.add_argument("--work", type=Path, default=Path("/tmp/curate-profile"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    setup = throughput.Setup(work, args.count, args.processes, args.threads, 256, "border", 90,
                             -(-args.count // args.processes), None)
    specs = throughput.generate_web(work / "web", min(args.images, args.count), 0, args.processes)
    stages = throughput.FILTER_STAGES if args.filters else []
    trees = [path.resolve() for path in args.tree] or [throughput.REPO]
    print(throughput.machine_description())
    report = {}
    with throughput.Nginx(work / "web", work / "nginx", 1, args.hosts) as server:
        setup.server = server
        for rows in (args.count, throughput.STARTUP_ROWS):
            setup.url_lists[rows] = work / f"urls-{rows}.parquet"
            write_cycled_url_list(setup.url_lists[rows], server, specs, rows)
        for tree in trees:
            label = tree.name if len(trees) > 1 else ""
            measured = measure(setup, tree, stages, args.runs, label)
            profile, seconds = profiled_run(setup, tree, stages, args.rate, label, args.count)
            startup, _ = profiled_run(setup, tree, stages, args.rate, label, throughput.STARTUP_ROWS)
            samples = marginal(read_samples(profile), read_samples(startup))
            extra_rows = args.count - throughput.STARTUP_ROWS
            sampled_ms = 1000 * sum(n for (_, name), n in samples.items() if name != IMPORTS) / args.rate / extra_rows
            table = breakdown(samples, args.rate, extra_rows, measured["cpu_ms_per_row"])
            title = f"{tree} ({args.count} rows, {'filter chain' if stages else 'stages: []'}, profiled run " \
                    f"{seconds:.1f} s)"
            print_table(title, table, sampled_ms, measured)
            report[str(tree)] = {"measured": measured, "sampled_ms_per_row": sampled_ms, "table": table}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
