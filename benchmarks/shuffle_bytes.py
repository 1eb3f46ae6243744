"""Bytes per sample that cross each shuffle (GroupByKey) of a recipe's pipeline.

Runs `curate run` in this process on the local FnApiRunner over a URL list,
then reads Beam's own per-PCollection metrics: element counts and sampled
encoded sizes.  For every GroupByKey of the pipeline graph it prints the
elements and estimated bytes that went into it, and the total per input row:
the figure a Dataflow Shuffle bill is proportional to.  Groupings inside a
combine are listed as "lifted" and not counted: Beam combines each worker's
share first, so only a few partial results cross those.

    .venv/bin/python benchmarks/shuffle_bytes.py --recipe manifests/local-sample.yaml
    .venv/bin/python benchmarks/shuffle_bytes.py --recipe R.yaml --input urls.parquet -- --allow-private-network

Without --input it serves the bundled 300-row sample web on loopback, as
`curate demo` does.  Sampled sizes are estimates (Beam samples elements).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

from apache_beam.metrics import monitoring_infos

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import cli  # noqa: E402
from pipeline.engine import run as run_module  # noqa: E402
from pipeline.demo.run_demo import run_demo  # noqa: E402

GROUP_BY_KEY = "beam:transform:group_by_key:v1"


def pcollection_sizes(result) -> dict[str, tuple[int, float]]:
    """PCollection id -> (elements, mean sampled encoded bytes)."""
    counts: dict[str, int] = collections.Counter()
    sampled: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for infos in result._monitoring_infos_by_stage.values():  # FnApiRunner's per-stage metrics
        for info in infos:
            pcollection = info.labels.get(monitoring_infos.PCOLLECTION_LABEL)
            if not pcollection:
                continue
            if info.urn == monitoring_infos.ELEMENT_COUNT_URN:
                counts[pcollection] += monitoring_infos.extract_counter_value(info)
            elif info.urn == monitoring_infos.SAMPLED_BYTE_SIZE_URN:
                count, total, _min, _max = monitoring_infos.extract_distribution(info)
                sampled[pcollection][0] += count
                sampled[pcollection][1] += total
    return {pc: (counts[pc], (s[1] / s[0]) if s[0] else 0.0) for pc, s in sampled.items()}


def shuffle_inputs(proto) -> list[tuple[str, str]]:
    """(transform name, input PCollection id) of every GroupByKey in the graph."""
    found = []
    for transform in proto.components.transforms.values():
        if transform.spec.urn == GROUP_BY_KEY:
            found.extend((transform.unique_name, pc) for pc in transform.inputs.values())
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "manifests" / "local-sample.yaml"))
    parser.add_argument("--input", help="URL list (default: the bundled sample web, served on loopback)")
    parser.add_argument("extra", nargs="*", help="more `curate run` arguments, after --")
    args = parser.parse_args()

    captured = {}
    real_run = run_module.run

    def run_and_keep(recipe, inputs, output_dir, options, save_pipeline=None):
        pipeline = run_module.make_pipeline(options)
        run_module.build_pipeline(pipeline, recipe, inputs, output_dir.rstrip("/"))
        captured["proto"] = pipeline.to_runner_api()
        result = pipeline.run()
        result.wait_until_finish()
        captured["result"] = result
        return result

    run_module.run = run_and_keep
    try:
        with tempfile.TemporaryDirectory() as work:
            output, extra = f"{work}/out", ["--direct_num_workers=1", *args.extra]
            if args.input:
                code = cli.main(["run", "--recipe", args.recipe, "--input", args.input, "--output", output, *extra])
            else:
                code = run_demo(output, args.recipe, extra)
            assert code == 0, "curate run failed"
            with open(f"{output}/report/audit.json") as handle:
                rows = json.load(handle)["counts"]["input"]
    finally:
        run_module.run = real_run

    sizes = pcollection_sizes(captured["result"])
    print(f"\n{'shuffle (GroupByKey)':<90} {'elements':>9} {'B/elem':>8} {'B/row':>8}")
    total = 0.0
    for name, pcollection in shuffle_inputs(captured["proto"]):
        count, mean = sizes.get(pcollection, (0, 0.0))
        if "Combine" in name:
            # Beam combines each worker's share before the shuffle: a few records cross, not these.
            print(f"{name[:90]:<90} {count:>9} {mean:>8.0f} {'lifted':>8}")
            continue
        total += count * mean
        print(f"{name[:90]:<90} {count:>9} {mean:>8.0f} {count * mean / rows:>8.0f}")
    print(f"{'all shuffles':<90} {'':>9} {'':>8} {total / rows:>8.0f}  bytes per input row ({rows} rows)")


if __name__ == "__main__":
    main()
