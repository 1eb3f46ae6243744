"""Peak memory of `curate run` at growing input sizes (issue: bounded memory).

Serves one small JPEG per URL from a loopback server (every URL distinct, the
bytes the same, so the download cost is tiny and the pipeline's own memory
shows), runs download + resize + write with no filter stages, and samples the
resident memory of the `curate` process and of each Beam worker process every
0.2 s.  The runner process and the worker processes are reported apart: with
the local FnApiRunner, data crossing a shuffle (GroupByKey) is held by the
runner process, while Dataflow, Spark and Flink keep it in their shuffle
service or spill it to disk.  `--engine flink-local` (or `spark-local`) runs
on that engine instead (pipeline/engine/runners.py; its job-server jar fetched by
scripts/fetch_job_servers.sh): its JVM is a child of the `curate` process and
is reported in its own column too.

    .venv/bin/python benchmarks/memory.py --rows 10000 100000 [--engine flink-local]
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.demo.localweb import LocalWeb  # noqa: E402

RECIPE = """\
download: {threads: 16, retries: 0}
resize: {image_size: 64, resize_mode: border}
output: {samples_per_shard: 10000}
stages: []
"""


def _proc_kib(path: str, field: str) -> int:
    """A `Field:   N kB` line of a /proc file; 0 if the process is gone."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (a forked worker's, pipeline.engine.worker_forkserver) split among
    their sharers, so a sum over processes counts each page once."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:")


def rss_kib(pid: int) -> int:
    return _proc_kib(f"/proc/{pid}/status", "VmRSS:")


def is_java(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "java"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found + [g for c in found for g in children(c)]


class PeakSampler:
    """Max RSS of the root process and of its largest descendant, and of the summed PSS of all, every 0.2 s."""

    def __init__(self, pid: int):
        self.pid, self.root_peak, self.worker_peak, self.total_peak, self.java_peak = pid, 0, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            root = rss_kib(self.pid)
            descendants = children(self.pid)
            workers = [rss_kib(c) for c in descendants]
            self.java_peak = max([self.java_peak, *(rss_kib(c) for c in descendants if is_java(c))])
            self.root_peak = max(self.root_peak, root)
            self.worker_peak = max([self.worker_peak, *workers])
            self.total_peak = max(self.total_peak, sum(pss_kib(p) for p in (self.pid, *descendants)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(rows: int, work: Path, web: LocalWeb, engine: str | None = None) -> dict:
    urls = work / f"urls-{rows}.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"url": web.url(f"img.jpg?n={i}"), "caption": f"sample picture number {i}"} for i in range(rows)]
    ), urls)
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = work / f"out-{rows}"
    command = [sys.executable, "-m", "pipeline.cli", "run", "--recipe", str(recipe), "--input", str(urls),
               "--output", str(out), "--allow-private-network", "--overwrite", *(["--engine", engine] if engine else [])]
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = PeakSampler(process.pid)
    _, err = process.communicate()
    sampler.stop()
    if process.returncode != 0:
        raise SystemExit(f"curate run failed at {rows} rows:\n{err[-2000:]}")
    return {"rows": rows, "seconds": time.monotonic() - start, "runner_mib": sampler.root_peak / 1024,
            "largest_worker_mib": sampler.worker_peak / 1024, "all_processes_mib": sampler.total_peak / 1024, "java_mib": sampler.java_peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--engine", choices=["flink-local", "spark-local"], help="default: Beam's FnApiRunner")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="curate-memory-") as temp:
        work = Path(temp)
        (work / "web").mkdir()
        jpeg = io.BytesIO()
        Image.new("RGB", (96, 72), (120, 80, 40)).save(jpeg, "JPEG", quality=85)
        (work / "web" / "img.jpg").write_bytes(jpeg.getvalue())
        with LocalWeb(work / "web") as web:
            print(f"{'rows':>8} {'seconds':>8} {'runner MiB':>11} {'largest worker MiB':>19} {'all MiB':>8} {'java MiB':>9}")
            for rows in args.rows:
                r = measure(rows, work, web, args.engine)
                print(f"{r['rows']:>8} {r['seconds']:>8.1f} {r['runner_mib']:>11.0f} "
                      f"{r['largest_worker_mib']:>19.0f} {r['all_processes_mib']:>8.0f} {r['java_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
