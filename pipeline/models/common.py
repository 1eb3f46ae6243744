"""Helpers shared by the model stages (language, nsfw, watermark, face_blur).

Model files come from inside installed packages, never from the network; heavy
libraries (onnxruntime, torch, cv2) are imported inside the functions, so
importing the `filters` package stays cheap for stages that do not use them.

The NudeNet detector (used by `nsfw` and `face_blur`) lives here too, loaded
once per process for both stages, with a small memory of its latest results:
see `nudenet_detections`.
"""
from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.records import KEEP, Verdict, drop


class ModelFileError(FileNotFoundError):
    """A model file is not where the stage expects it."""


def packaged_file(package: str, *parts: str) -> Path:
    """Path of a data file shipped inside an installed package.

    Looks the package up without importing it: some of these packages run
    network-aware setup code in their `__init__`.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"package {package!r} is not installed; it ships the model this stage needs")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise ModelFileError(f"{path} is missing from the installed {package!r} package")
    return path


def existing_file(path: str, what: str) -> Path:
    """`path` as a Path, or a clear error naming `what` it should hold."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ModelFileError(f"{what} not found: {resolved}")
    return resolved


def tag_or_drop(score: float | None, threshold: float, action: str, reason: str, missing_reason: str) -> Verdict:
    """A score stage's decision: always keep when tagging, drop at or above the threshold otherwise.

    A sample without a score (unreadable image) is dropped either way, so it shows in the rejects.
    """
    if score is None:
        return drop(missing_reason)
    if action == "drop" and score >= threshold:
        return drop(reason)
    return KEEP


def decode_rgb(data: bytes | None) -> Image.Image | None:
    """The sample's encoded image as RGB, or None if it is missing or unreadable."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def onnx_session(path: Path):
    """A CPU onnxruntime session for the model at `path`, on one thread.

    One thread because Beam runs one worker process per core: onnxruntime's
    default (a thread per core in every process) oversubscribes the cores
    and spins its idle threads, which nearly doubled the CPU time per image
    (benchmarks/README.md).  Where one process has several bundle threads
    (Dataflow's harness threads), each `run` call still computes on its
    caller's thread, so they run in parallel.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the shipped models log harmless shape warnings
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


_sessions_lock = threading.Lock()
_sessions: dict[str, Any] = {}


def shared_onnx_session(path: Path):
    """One `onnx_session` per model file and process, whichever stage or thread asks first.

    RunInference may set up a stage in several threads of a worker; a
    session is thread-safe, so they share one copy of the weights.
    """
    key = str(Path(path).resolve())
    with _sessions_lock:
        if key not in _sessions:
            _sessions[key] = onnx_session(Path(key))
        return _sessions[key]


def mlp_from_state_dict(state_dict: dict[str, Any], prefix: str = ""):
    """Rebuild a Linear or an `nn.Sequential` of Linear layers from its state_dict.

    The keys under `prefix` are either `weight`/`bias` (one `nn.Linear`) or
    `<index>.weight`/`<index>.bias` (Linear layers of an `nn.Sequential`).  In
    a Sequential, a gap between the indices of two consecutive Linear layers
    means the original had an activation there (and maybe Dropout): a ReLU is
    put at the first free index, as in LAION's NSFW and watermark heads, and
    Identity fills the rest (Dropout is the identity at inference).  Layer
    sizes come from the weight shapes, so no architecture has to be declared.
    A state_dict does not record activations: this rule fits LAION's NSFW
    (H14) and watermark heads, not heads whose gaps hold only Dropout (the
    aesthetic v2 head, which the `aesthetic` stage loads its own way).
    """
    import torch

    own = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if set(own) == {"weight", "bias"} or set(own) == {"weight"}:
        layer = _linear_like(own["weight"], "bias" in own)
        layer.load_state_dict(own)
        return layer.eval()
    indices = sorted({int(key.split(".")[0]) for key in own if key.split(".")[0].isdigit()})
    if not indices or any(not key.split(".")[0].isdigit() for key in own):
        raise ValueError(
            f"state_dict under {prefix or '(top level)'!r} is not a Linear layer or a Sequential of them: "
            f"keys {sorted(own)[:6]}"
        )
    modules: list[torch.nn.Module] = []
    for index in range(indices[-1] + 1):
        if index in indices:
            modules.append(_linear_like(own[f"{index}.weight"], f"{index}.bias" in own))
        elif index - 1 in indices:
            modules.append(torch.nn.ReLU())
        else:
            modules.append(torch.nn.Identity())
    head = torch.nn.Sequential(*modules)
    head.load_state_dict(own)
    return head.eval()


def _linear_like(weight, has_bias: bool):
    import torch

    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D Linear weight, got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    return torch.nn.Linear(in_features, out_features, bias=has_bias)


def read_state_dict(path: Path) -> dict[str, Any]:
    """A torch state_dict from `path`, loaded on CPU without running pickled code."""
    import torch

    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} does not hold a state_dict (found {type(loaded).__name__})")
    return loaded


# NudeNet's detector, shared by the nsfw and face_blur stages -------------------

# The detector's classes, in output order (from nudenet/nudenet.py).
NUDENET_CLASSES = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
FACE_CLASSES = ("FACE_FEMALE", "FACE_MALE")
NUDENET_INPUT_SIDE = 320  # NudeNet's own size; the model takes any multiple of 32 (and any batch)
NUDENET_FACE_FLOOR = 0.2  # NudeNet's own cut: weaker face candidates are not kept unless a stage asks for them
_BOX_COORDINATES = 4  # each anchor's output: cx, cy, w, h, then one confidence per class
_FACE_ROWS = np.array([_BOX_COORDINATES + NUDENET_CLASSES.index(name) for name in FACE_CLASSES])
# Enough for the samples between the two stages of one worker process (a few
# batches per thread); each entry is a few hundred bytes.
_REMEMBERED_IMAGES = 4096


@dataclass(frozen=True, eq=False)  # numpy fields: compared by identity
class NudeNetDetections:
    """What the detector found in one image, in that image's pixels: what `nsfw` and `face_blur` need of it."""

    size: tuple[int, int]  # width, height of the image it ran on
    class_top: np.ndarray  # (classes,) float32: each class's highest confidence over all anchors
    face_floor: float  # face candidates are the anchors whose face confidence is >= this
    face_boxes: tuple[tuple[float, float, float, float], ...]  # their x0, y0, x1, y1, clipped; anchor order
    face_scores: np.ndarray  # (candidates,) float32: their face confidence (max over FACE_CLASSES)


def nudenet_model_file() -> Path:
    return packaged_file("nudenet", "320n.onnx")


def nudenet_session():
    """The detector's onnxruntime session, loaded once per process whichever stage asks first."""
    return shared_onnx_session(nudenet_model_file())


def nudenet_detections(
    encoded: list[bytes | None],
    images: list[Image.Image | None] | None = None,
    face_threshold: float | None = None,
    side: int = NUDENET_INPUT_SIDE,
) -> list[NudeNetDetections | None]:
    """The detector's results for each encoded image; None for an unreadable one.

    `images` are the decoded images when the caller has them (else the
    images the detector must run on are decoded here).  `face_threshold` is
    the lowest face confidence the caller will look at (None: no faces
    needed).  An image whose exact bytes the detector saw recently in this
    process, with face candidates down to that threshold, is not run again:
    the stage that runs second on the same image (nsfw and face_blur) reuses
    the first one's results.  Different bytes (an image face_blur blurred)
    run again, so each stage's results are those it would get alone.
    `side` is the detector's input side: results at another side are not reused.
    """
    keys = [_image_key(data, side) for data in encoded]
    results = [_recent.get(key, face_threshold) for key in keys]
    to_run = [i for i, result in enumerate(results) if result is None]
    decoded = {i: images[i] if images is not None else decode_rgb(encoded[i]) for i in to_run}
    readable = [i for i in to_run if decoded[i] is not None]
    if readable:
        floor = NUDENET_FACE_FLOOR if face_threshold is None else min(NUDENET_FACE_FLOOR, face_threshold)
        for i, detections in zip(readable, run_nudenet([decoded[i] for i in readable], floor, side)):
            results[i] = detections
            _recent.put(keys[i], detections)
    return results


def forget_nudenet_detections() -> None:
    """Empty the memory of recent results (tests: make the next call run the detector)."""
    _recent.clear()


def run_nudenet(
    images: list[Image.Image], face_floor: float, side: int = NUDENET_INPUT_SIDE
) -> list[NudeNetDetections]:
    """Run the detector on a batch of RGB images, scaled to `side` x `side`."""
    session = nudenet_session()
    blob = np.stack([nudenet_input(image, side) for image in images])
    (output,) = session.run(None, {session.get_inputs()[0].name: blob})
    return [summarise_nudenet(anchors, image.size, face_floor, side) for anchors, image in zip(output, images)]


def nudenet_input(image: Image.Image, side: int = NUDENET_INPUT_SIDE) -> np.ndarray:
    """NudeNet's preprocessing of a PIL RGB image: a (3, side, side) float32 BGR array."""
    import cv2

    pixels = np.asarray(image)[:, :, ::-1]
    longer = max(pixels.shape[:2])
    square = np.zeros((longer, longer, 3), np.uint8)
    square[: pixels.shape[0], : pixels.shape[1]] = pixels
    resized = cv2.resize(square, (side, side), interpolation=cv2.INTER_LINEAR)
    return (resized.astype(np.float32) / 255.0).transpose(2, 0, 1)


def summarise_nudenet(
    anchors: np.ndarray, size: tuple[int, int], face_floor: float, side: int = NUDENET_INPUT_SIDE
) -> NudeNetDetections:
    """`anchors`: the detector's (4 + classes, anchors) output for one image of `size` run at `side`."""
    class_top = anchors[_BOX_COORDINATES:].max(axis=1)
    confidence = anchors[_FACE_ROWS].max(axis=0)
    candidates = np.flatnonzero(confidence >= face_floor)
    # nudenet_input pads at the right and bottom to a square, then scales it to the model's side.
    scale = max(size) / side
    centre_x, centre_y, box_width, box_height = (anchors[:_BOX_COORDINATES, candidates] * scale).tolist()
    boxes = tuple(
        (max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(size[0], cx + w / 2), min(size[1], cy + h / 2))
        for cx, cy, w, h in zip(centre_x, centre_y, box_width, box_height)
    )
    return NudeNetDetections(tuple(size), _frozen(class_top), face_floor, boxes, _frozen(confidence[candidates]))


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only copy: detections are shared between stages, none may change them."""
    array = np.array(array, dtype=np.float32)
    array.flags.writeable = False
    return array


def _image_key(data: bytes | None, side: int) -> bytes | None:
    return hashlib.blake2b(data, digest_size=16, salt=side.to_bytes(16, "little")).digest() if data else None


class _RecentDetections:
    """The latest detector results of this process, by image bytes; oldest forgotten first."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._items: collections.OrderedDict[bytes, NudeNetDetections] = collections.OrderedDict()
        self._lock = threading.Lock()  # RunInference may score batches in several threads

    def get(self, key: bytes | None, face_threshold: float | None) -> NudeNetDetections | None:
        with self._lock:
            found = self._items.get(key) if key is not None else None
        if found is None or (face_threshold is not None and found.face_floor > face_threshold):
            return None
        return found

    def put(self, key: bytes | None, detections: NudeNetDetections) -> None:
        if key is None:
            return
        with self._lock:
            self._items[key] = detections
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_recent = _RecentDetections(_REMEMBERED_IMAGES)
