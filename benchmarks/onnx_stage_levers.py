"""What bench_onnx_stages.py tries beyond input sizes: where an image's CPU goes, static int8, OpenVINO.

* `profile`: CPU ms per image of each part of the two stages at their
  defaults -- decode, preprocessing, the model (onnxruntime, one thread),
  post-processing -- timed separately on the same images.
* `static_int8_models`: onnxruntime's static (QDQ) int8 quantization of both
  detectors (`quantize_static`, per-channel int8 weights with reduce_range,
  as onnxruntime advises on AVX2, uint8 activations), calibrated on
  `watermark_eval.py` images of seeds 5-6, which the accuracy figures never
  use.  The text detector is first folded (`quant_pre_process`) and
  converted to opset 13 (its opset 12 has no per-channel DequantizeLinear).
  Needs the `onnx` package, not a project dependency.
* `OpenVinoSession`: the same ONNX file compiled by OpenVINO for the CPU, on
  one thread, in f32, behind the two calls the stages make of an onnxruntime
  session.  Needs the `openvino` package, not a project dependency.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.watermark_eval import make_benchmark
from pipeline.models import common as model_common
from pipeline.models.common import decode_rgb
from filters.watermark import WatermarkFilter
from pipeline.models.text_regions import detector_file

CALIBRATION_SEEDS = (5, 6)


def profile(images: list[bytes], rounds: int) -> dict[str, float]:
    """'<stage> <part>' -> median CPU ms per image over `rounds`."""
    decoded = [decode_rgb(data) for data in images]
    nudenet = model_common.onnx_session(model_common.nudenet_model_file())
    side = model_common.NUDENET_INPUT_SIDE
    detector = WatermarkFilter()
    detector.setup()
    text = detector._scorer
    text_model = text._detector
    blobs = [model_common.nudenet_input(image, side)[None] for image in decoded]
    inputs = [text_model._detector_input(image) for image in decoded]
    anchors = [_run(nudenet, blob) for blob in blobs]
    maps = [_run(text_model._session, x) for x in inputs]
    parts = {
        "decode (both)": lambda: [decode_rgb(data) for data in images],
        "nsfw preprocessing": lambda: [model_common.nudenet_input(image, side) for image in decoded],
        "nsfw model": lambda: [_run(nudenet, blob) for blob in blobs],
        "nsfw post-processing": lambda: [
            model_common.summarise_nudenet(a[0], image.size, model_common.NUDENET_FACE_FLOOR, side)
            for a, image in zip(anchors, decoded)
        ],
        "watermark preprocessing": lambda: [text_model._detector_input(image) for image in decoded],
        "watermark model": lambda: [_run(text_model._session, x) for x in inputs],
        "watermark post-processing": lambda: [text.boxes_from_map(m, image) for m, image in zip(maps, decoded)],
    }
    for part in parts.values():  # warm-up
        part()
    times: dict[str, list[float]] = {label: [] for label in parts}
    for _ in range(rounds):
        for label, part in parts.items():
            started = time.process_time()
            part()
            times[label].append(time.process_time() - started)
    return {label: statistics.median(seconds) * 1000 / len(images) for label, seconds in times.items()}


def _run(session, blob: np.ndarray) -> np.ndarray:
    (output,) = session.run(None, {session.get_inputs()[0].name: blob})
    return output


def static_int8_models(directory: Path) -> dict[str, Path]:
    """'nsfw' and 'watermark' -> a statically quantized copy of their detector, written in `directory`."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = [decode_rgb(image.jpeg) for seed in CALIBRATION_SEEDS for image in make_benchmark(24, seed)]
    detector = WatermarkFilter()
    detector.setup()

    class Feeds(CalibrationDataReader):
        def __init__(self, name: str, blobs: list[np.ndarray]):
            self._feeds = iter([{name: blob} for blob in blobs])

        def get_next(self):
            return next(self._feeds, None)

    text_source = detector_file()
    folded = directory / "text_detector.folded.onnx"
    quant_pre_process(str(text_source), str(folded), skip_symbolic_shape=True)
    onnx.save(version_converter.convert_version(onnx.load(folded), 13), folded)
    models = {
        "nsfw": (model_common.nudenet_model_file(), [model_common.nudenet_input(i)[None] for i in calibration]),
        "watermark": (folded, [detector._scorer._detector._detector_input(i) for i in calibration]),
    }
    quantized = {}
    for stage, (source, blobs) in models.items():
        quantized[stage] = directory / f"{stage}.int8.onnx"
        name = model_common.onnx_session(source).get_inputs()[0].name
        quantize_static(
            str(source), str(quantized[stage]), Feeds(name, blobs), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
        )
    return quantized


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO (CPU, one thread, f32), called as the stages call onnxruntime."""

    def __init__(self, path: Path):
        import openvino

        self._model = openvino.Core().compile_model(
            str(path), "CPU",
            {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"},
        )
        self._request = self._model.create_infer_request()  # the benchmark calls it from one thread

    def get_inputs(self):
        return [SimpleNamespace(name=port.any_name) for port in self._model.inputs]

    def run(self, _output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self._request.infer(feeds)
        return [np.array(results[port]) for port in self._model.outputs]
