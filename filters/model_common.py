"""Helpers shared by the model stages (language, nsfw, watermark).

Model files come from inside installed packages, never from the network; heavy
libraries (onnxruntime, torch) are imported inside the functions, so importing
the `filters` package stays cheap for stages that do not use them.
"""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.schema import KEEP, Verdict, drop


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
    """A CPU onnxruntime session for the model at `path`."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the shipped models log harmless shape warnings
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
