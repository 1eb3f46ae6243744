"""When each file of a run's output appears: where a `curate run`'s wall time goes, phase by phase.

    .venv/bin/python benchmarks/run_timeline.py OUT -- .venv/bin/python -m pipeline.cli run ... --output OUT

Runs the command and polls OUT every 0.1 s; prints the first time each file
appeared (download checkpoints: their temporary file when a task starts, the
final one when it is done; then shards, _SUCCESS, the report) and the end.
Start-up is the time to the first checkpoint; the tail is from the last
checkpoint to the end.  The command's own output goes to OUT.log.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import time


def appearances(out: str, command: list[str]) -> tuple[dict[str, float], float]:
    start, seen = time.monotonic(), {}
    with open(f"{out.rstrip('/')}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            for root, dirs, files in os.walk(out):
                for name in files + dirs:
                    seen.setdefault(os.path.relpath(os.path.join(root, name), out), time.monotonic() - start)
            time.sleep(0.1)
    return seen, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the run's --output folder (must not exist yet)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the curate command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    seen, end = appearances(args.out, command)
    for path, at in sorted(seen.items(), key=lambda item: item[1]):
        print(f"{at:7.2f} s  {path}")
    checkpoints = [at for path, at in seen.items() if ".ckpt.parquet" in path]
    if checkpoints:
        print(f"first download task started at {min(checkpoints):.2f} s; last checkpoint at {max(checkpoints):.2f} s; "
              f"end at {end:.2f} s (tail {end - max(checkpoints):.2f} s)")
    else:
        print(f"end at {end:.2f} s (no download checkpoints seen)")


if __name__ == "__main__":
    main()
