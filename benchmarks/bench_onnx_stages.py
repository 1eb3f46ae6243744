"""CPU cost and accuracy of the ONNX model stages (nsfw's NudeNet, watermark's text detector) per input size.

Cost is process CPU time per image (`time.process_time()`, all threads of
the process), not wall time: the figures hold on a loaded machine and show
what one worker process costs its core.  Variants are timed round by round,
interleaved, and the median round is printed.  "default threads" is an
onnxruntime session with its default options (a thread per core), as the
stages used before sessions were pinned to one thread.

Accuracy, on generated images only (no download):

* watermark: precision/recall on `watermark_eval.py`'s images (seeds 1-3 by
  default), and agreement of the verdicts (score >= 0.5) with the default side.
* nsfw: NO ACCURACY -- there is no labelled NSFW set here.  What is printed
  is agreement with NudeNet at its own size (320): the max absolute score
  difference and the share of equal verdicts at 0.5, on the same generated
  (benign) images, so it measures drift, not correctness on real nudity.

    python benchmarks/bench_onnx_stages.py [--count 80] [--rounds 3] [--int8] [--openvino] [--profile]

`--int8` also times onnxruntime's dynamic int8 quantization of NudeNet
(`quantize_dynamic`) and the static (QDQ, calibrated) int8 quantization of
both detectors (benchmarks/onnx_stage_levers.py), written to a temporary
directory; needs the `onnx` package.  `--openvino` also runs both detectors
with OpenVINO instead of onnxruntime (needs the `openvino` package).
`--profile` first prints where each stage's CPU goes (decode,
preprocessing, model, post-processing).  Neither package is a project
dependency.  Not a test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import onnx_stage_levers  # noqa: E402
from benchmarks.watermark_eval import make_benchmark  # noqa: E402
from pipeline.models import common as model_common  # noqa: E402
from filters.nsfw import NsfwFilter  # noqa: E402
from filters.watermark import WatermarkFilter  # noqa: E402
from pipeline.core.records import Sample  # noqa: E402

THRESHOLD = 0.5


def default_threads_session(path: Path):
    """A session as onnxruntime makes it without options: its own thread pool."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def int8_nudenet(directory: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = directory / "320n.int8.onnx"
    quantize_dynamic(str(model_common.nudenet_model_file()), str(path), weight_type=QuantType.QUInt8)
    return path


def scored(stage, images: list[bytes], field: str) -> tuple[float, np.ndarray]:
    """(CPU seconds per image, scores) of a set-up stage over `images`, in its batches."""
    model_common.forget_nudenet_detections()
    samples = [Sample(key=f"{i:05d}", shard_id=0, url="", image=data) for i, data in enumerate(images)]
    size = stage.params.batch_size
    started = time.process_time()
    for start in range(0, len(samples), size):
        stage.score(samples[start : start + size])
    seconds = time.process_time() - started
    return seconds / len(samples), np.array([sample.fields[field] for sample in samples])


def nsfw_variants(args, int8_models: dict[str, Path], directory: Path) -> dict[str, tuple[NsfwFilter, object]]:
    """label -> (stage, NudeNet session to install while it runs)."""
    fast = model_common.onnx_session(model_common.nudenet_model_file())
    variants = {"nsfw side 320, default threads": (320, default_threads_session(model_common.nudenet_model_file()))}
    variants.update({f"nsfw side {side}": (side, fast) for side in args.nsfw_sides})
    if args.int8:
        variants["nsfw side 320, int8"] = (320, model_common.onnx_session(int8_nudenet(directory)))
        variants["nsfw side 320, static int8"] = (320, model_common.onnx_session(int8_models["nsfw"]))
    if args.openvino:
        variants["nsfw side 320, OpenVINO"] = (320, onnx_stage_levers.OpenVinoSession(model_common.nudenet_model_file()))
    stages = {}
    for label, (side, session) in variants.items():
        stage = NsfwFilter(NsfwFilter.Params(detector_side=side))
        stage.setup()
        stages[label] = (stage, session)
    return stages


def watermark_variants(args, int8_models: dict[str, Path]) -> dict[str, WatermarkFilter]:
    stages = {}
    for side in args.watermark_sides:
        stages[f"watermark side {side}"] = watermark_stage(side)
    default_side = args.watermark_sides[0]
    sessions = {"default threads": default_threads_session}
    if args.int8:
        sessions["static int8"] = lambda _path: model_common.onnx_session(int8_models["watermark"])
    if args.openvino:
        sessions["OpenVINO"] = onnx_stage_levers.OpenVinoSession
    for label, session in sessions.items():
        stage = watermark_stage(default_side)
        stage._scorer._detector._session = session(stage.model_path)
        stages[f"watermark side {default_side}, {label}"] = stage
    return stages


def watermark_stage(side: int) -> WatermarkFilter:
    stage = WatermarkFilter(WatermarkFilter.Params(detector_side=side))
    stage.setup()
    return stage


def run_nsfw(stage_and_session, images):
    stage, session = stage_and_session
    model_common.nudenet_session = lambda: session  # the per-process session the detector runs on
    return scored(stage, images, "nsfw_score")


def run_watermark(stage, images):
    return scored(stage, images, "watermark_score")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=80, help="images per watermark_eval seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nsfw-sides", type=int, nargs="+", default=[320, 288, 256, 224])
    parser.add_argument("--watermark-sides", type=int, nargs="+", default=[512, 448, 384])
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--openvino", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    benchmark = [image for seed in args.seeds for image in make_benchmark(args.count, seed)]
    images = [image.jpeg for image in benchmark]
    truth = np.array([image.has_watermark for image in benchmark])
    if args.profile:
        print(f"CPU ms per image by part, default settings, median of {args.rounds} rounds:")
        for part, milliseconds in onnx_stage_levers.profile(images, args.rounds).items():
            print(f"  {part:28s} {milliseconds:6.2f} ms")
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        int8_models = onnx_stage_levers.static_int8_models(Path(tmp)) if args.int8 else {}
        runs = {label: (run_nsfw, v) for label, v in nsfw_variants(args, int8_models, Path(tmp)).items()}
        runs.update({label: (run_watermark, v) for label, v in watermark_variants(args, int8_models).items()})
        for run, stage in runs.values():  # warm-up: first calls allocate onnxruntime's memory arenas
            run(stage, images[:16])
        seconds: dict[str, list[float]] = {label: [] for label in runs}
        scores: dict[str, np.ndarray] = {}
        for round_number in range(args.rounds):
            for label, (run, stage) in runs.items():
                cpu, scores[label] = run(stage, images)
                seconds[label].append(cpu)
            print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{len(images)} images (watermark_eval seeds {args.seeds}, {args.count} each); "
          f"CPU time per image, median of {args.rounds} rounds")
    nsfw_reference = scores[f"nsfw side {model_common.NUDENET_INPUT_SIDE}"]
    watermark_reference = scores[f"watermark side {args.watermark_sides[0]}"]
    for label, times in seconds.items():
        cpu = statistics.median(times)
        reference = nsfw_reference if label.startswith("nsfw") else watermark_reference
        drift = np.abs(scores[label] - reference).max()
        agree = ((scores[label] >= THRESHOLD) == (reference >= THRESHOLD)).mean()
        line = f"{label:40s} {cpu * 1000:6.1f} ms  {1 / cpu:5.1f} images/s"
        line += f"  max|diff| {drift:.3f}  same verdict {agree:.3f}"
        if label.startswith("watermark"):
            flagged = scores[label] >= THRESHOLD
            precision = (flagged & truth).sum() / max(flagged.sum(), 1)
            line += f"  precision {precision:.3f} recall {(flagged & truth).sum() / truth.sum():.3f}"
        print(line)
    print(f"load average (1 minute) at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
