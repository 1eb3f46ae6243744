"""Wall time per fused Beam stage of a local `curate run`, from the FnApiRunner's own log.

The local runner executes fused stages one after another and logs each
bundle it starts; the time from one start to the next is that stage's.
Prints the time before the first bundle (imports, recipe, graph), then the
stages, slowest first.  Arguments are `curate run`'s:

    .venv/bin/python benchmarks/stage_times.py run --recipe R.yaml --input urls.parquet --output /tmp/o \\
        --allow-private-network --direct_num_workers=2 --direct_running_mode=multi_processing
"""
from __future__ import annotations

import collections
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import cli  # noqa: E402

BUNDLE_LOG = "apache_beam.runners.portability.fn_api_runner.fn_runner.run_bundle"
PREFIX = "Running bundle for stage "


class BundleStarts(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.starts: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(PREFIX):
            self.starts.append((time.perf_counter(), message.split("\n")[0][len(PREFIX):]))


def main() -> None:
    starts = BundleStarts()
    logger = logging.getLogger(BUNDLE_LOG)
    logger.setLevel(logging.DEBUG)
    logger.addHandler(starts)
    logger.propagate = False
    begin = time.perf_counter()
    code = cli.main(sys.argv[1:])
    end = time.perf_counter()
    if not starts.starts:
        raise SystemExit("no bundles logged: is this a local run?")
    per_stage: dict[str, float] = collections.Counter()
    for (start, stage), (next_start, _) in zip(starts.starts, starts.starts[1:] + [(end, "")]):
        per_stage[stage.replace("ref_AppliedPTransform_", "")] += next_start - start
    print(f"\nexit {code}: {end - begin:.2f} s in all, first bundle after {starts.starts[0][0] - begin:.2f} s, "
          f"{len(per_stage)} stages")
    for stage, seconds in sorted(per_stage.items(), key=lambda item: -item[1]):
        print(f"{seconds * 1000:8.0f} ms  {stage[:150]}")


if __name__ == "__main__":
    main()
