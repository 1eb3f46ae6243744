"""open_clip models for the model stages: checked before the run, loaded once per process.

A model is named by three parameters, the same on every stage that uses one:

* `model`: an open_clip architecture name ("ViT-B-32-quickgelu", "coca_ViT-L-14").
* `pretrained`: an open_clip pretrained tag ("openai", "laion2b_s34b_b79k") or the
  path of a local checkpoint file.  A tag makes open_clip download the weights
  from the Hugging Face hub (or the tag's URL) on first use: fine on a machine
  with network access, impossible on an offline worker.  A path never touches
  the network.
* `pretrained_tag`: for a checkpoint file, the open_clip tag whose weights it
  holds ("openai"): the model is then built with that tag's activation and
  preprocessing.  Needed for a file of an architecture whose tags disagree on
  the activation (see pipeline.models.openclip_weights, which also covers tags).
* `model_config`: optional path of an open_clip model-config JSON, for
  architectures open_clip does not ship.  The file is registered under the name
  given as `model`.  Both open_clip's own layout (`embed_dim`, `vision_cfg`,
  `text_cfg`, ...) and the hub layout (`{"model_cfg": ..., "preprocess_cfg": ...}`)
  are accepted; the latter's image mean/std/interpolation/resize mode are used.

`check_weights` lets the command line fail before the pipeline starts;
`load_model` returns (model, preprocess, tokenizer) and keeps one instance per
process and source, so stages sharing a model share the memory.  A
`model_config` is registered with open_clip from a temporary copy that is
deleted at once (open_clip keeps the parsed config in memory).
"""
from __future__ import annotations

import difflib
import io
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from PIL import Image

# ModelLoadError is raised (and caught by callers) from here as well.
from pipeline.models.openclip_weights import PREPROCESS_ARGUMENTS, ModelLoadError, ResolvedWeights, resolve_weights  # noqa: F401
from pipeline.core.records import KEEP, Sample, Verdict, drop

SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
# open_clip only registers configs that have these keys.
REQUIRED_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")

@dataclass(frozen=True)
class ModelSource:
    """Where one model comes from; the cache key of `load_model`."""

    model: str
    pretrained: str
    model_config: str | None = None
    device: str = "cpu"
    pretrained_tag: str | None = None

    def describe(self) -> str:
        return f"{self.model} ({self.pretrained})"

    @classmethod
    def of(cls, params: Any, prefix: str = "") -> "ModelSource":
        """From a stage's params: `{prefix}model`, `{prefix}pretrained`, `{prefix}model_config`, `device`
        and `{prefix}pretrained_tag` (optional on a stage)."""
        return cls(
            getattr(params, f"{prefix}model"),
            getattr(params, f"{prefix}pretrained"),
            getattr(params, f"{prefix}model_config"),
            params.device,
            getattr(params, f"{prefix}pretrained_tag", None),
        )

    def check(self) -> None:
        """Fail before the run if the weights cannot be found; log where they come from."""
        check_and_log_weights(self.model, self.pretrained, self.model_config, self.device, self.pretrained_tag)


class OpenClipModel(NamedTuple):
    model: Any  # torch.nn.Module in eval mode, on the source's device
    preprocess: Callable[[Image.Image], Any]  # PIL image -> CHW tensor
    tokenizer: Callable[[list[str]], Any]  # texts -> token tensor


log = logging.getLogger(__name__)
_cache: dict[ModelSource, OpenClipModel] = {}
_cache_lock = threading.Lock()


def check_weights(model: str, pretrained: str, model_config: str | None = None, device: str = "cpu",
                  pretrained_tag: str | None = None) -> str:
    """Check that a model can be loaded, without loading it; return where its weights come from.

    Raises ModelLoadError for an unknown architecture, a missing or malformed
    config file, a checkpoint path that does not exist, a tag open_clip does
    not know for that architecture, weights whose activation the architecture
    contradicts or cannot be told (pipeline.models.openclip_weights), or a device this
    machine does not have.
    """
    return _checked_weights(model, pretrained, model_config, device, pretrained_tag)[0]


def _checked_weights(model: str, pretrained: str, model_config: str | None, device: str,
                     pretrained_tag: str | None) -> tuple[str, ResolvedWeights]:
    """`check_weights`'s description, and the tag and activation the weights resolve to."""
    import open_clip

    if model.startswith(SCHEMA_PREFIXES):
        # open_clip would fetch the config (and weights) from the hub while merely looking the name up.
        raise ModelLoadError(f"model {model!r}: 'hf-hub:'/'local-dir:' names are not supported; give the "
                             "architecture name, the checkpoint file as pretrained and its config as model_config")
    if model_config:
        register_model_config(model, model_config)
    if open_clip.get_model_config(model) is None:
        raise ModelLoadError(f"unknown open_clip model {model!r}{_suggest(model, open_clip.list_models())}; "
                             "for another architecture give its config JSON as model_config")
    _check_device(device)
    if not pretrained:
        raise ModelLoadError(f"model {model!r}: pretrained is empty; give a pretrained tag or a checkpoint path")
    if is_checkpoint_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"model {model!r}: checkpoint file {str(path)!r} does not exist")
        weights = resolve_weights(model, pretrained, pretrained_tag, path)
        return f"{model}: checkpoint file {path}{weights.note(model)}{_hub_parts_note(model)}", weights
    if not open_clip.get_pretrained_cfg(model, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model)
        known = f"known tags for {model}: {', '.join(tags)}" if tags else f"open_clip has no pretrained tags for {model}"
        raise ModelLoadError(f"model {model!r}: {pretrained!r} is neither a known pretrained tag nor a "
                             f"checkpoint path ({known}); a path must contain '/' or end in "
                             f"{'/'.join(CHECKPOINT_SUFFIXES)}")
    weights = resolve_weights(model, pretrained, pretrained_tag, None)
    return (f"{model}: pretrained tag {pretrained!r}, downloaded by open_clip from the Hugging Face hub "
            "on first use (every worker needs network access; for offline workers pass a checkpoint path and "
            f"pretrained_tag){weights.note(model)}{_hub_parts_note(model)}"), weights


def check_and_log_weights(model: str, pretrained: str, model_config: str | None, device: str,
                          pretrained_tag: str | None = None) -> None:
    """`check_weights`, then tell the user which weights the run will use; a hub download stands out."""
    description = check_weights(model, pretrained, model_config, device, pretrained_tag)
    offline = is_checkpoint_path(pretrained) and not _hub_parts_note(model)
    log.log(logging.INFO if offline else logging.WARNING, description)


def load_model(source: ModelSource) -> OpenClipModel:
    """The model, its eval preprocessing and its tokenizer; loaded once per process and source."""
    with _cache_lock:
        if source not in _cache:
            _cache[source] = _load_uncached(source)
        return _cache[source]


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def is_checkpoint_path(pretrained: str) -> bool:
    """Tags are bare words ("laion2b_s34b_b79k"); anything path-like is a file."""
    return ("/" in pretrained or os.sep in pretrained or pretrained.startswith(("~", "."))
            or pretrained.lower().endswith(CHECKPOINT_SUFFIXES) or os.path.exists(pretrained))


def register_model_config(model: str, config_path: str) -> None:
    """Make open_clip know `model` as the architecture in `config_path` (idempotent).

    open_clip names a config by its file name, so the JSON is rewritten under
    `model` in a private directory and registered with `add_model_config`.
    """
    import open_clip

    model_cfg, _preprocess = read_model_config(config_path)
    known = open_clip.get_model_config(model)
    if known is not None:
        if known == model_cfg:
            return
        raise ModelLoadError(f"model_config {config_path!r}: open_clip already defines {model!r} as a different "
                             "architecture; give this config a model name of its own")
    if "/" in model or os.sep in model:
        raise ModelLoadError(f"model {model!r}: a model defined by model_config needs a name without '/'")
    # open_clip parses the file when it is added and keeps the config in memory; later rescans skip the
    # deleted file, so nothing is left behind in the temp directory.
    with tempfile.TemporaryDirectory(prefix="curate-openclip-configs-") as directory:
        path = Path(directory) / f"{model}.json"
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)


def read_model_config(config_path: str) -> tuple[dict, dict]:
    """(model config, preprocess config) from an open_clip or hub-layout JSON file."""
    path = Path(config_path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"model_config file {str(path)!r} does not exist")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"model_config {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(document, dict):
        raise ModelLoadError(f"model_config {str(path)!r} must hold a JSON object")
    model_cfg = document.get("model_cfg", document)
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in model_cfg]
    if missing:
        raise ModelLoadError(f"model_config {str(path)!r} lacks {', '.join(missing)}; "
                             "expected an open_clip model config")
    return model_cfg, document.get("preprocess_cfg", {})


def _load_uncached(source: ModelSource) -> OpenClipModel:
    import open_clip

    _description, weights = _checked_weights(source.model, source.pretrained, source.model_config, source.device,
                                             source.pretrained_tag)
    pretrained = source.pretrained
    if is_checkpoint_path(pretrained):
        pretrained = str(Path(pretrained).expanduser())
    try:
        model, _train_preprocess, preprocess = open_clip.create_model_and_transforms(
            source.model,
            pretrained=pretrained,
            device=source.device,
            require_pretrained=True,
            force_quick_gelu=weights.force_quick_gelu,
            # torch.load refuses TorchScript archives with weights_only; open_clip then reads their state_dict.
            weights_only=not weights.torchscript,
            **{**weights.preprocess, **_preprocess_overrides(source.model_config)},
        )
    except RuntimeError as err:
        # Mismatched checkpoints surface as torch's load_state_dict RuntimeError.
        raise ModelLoadError(f"cannot load {source.describe()}: {err}") from err
    model.eval()
    return OpenClipModel(model, preprocess, open_clip.get_tokenizer(source.model))


def _hub_parts_note(model: str) -> str:
    """Parts open_clip fetches from the hub even when the weights are a local file."""
    import open_clip

    text_cfg = (open_clip.get_model_config(model) or {}).get("text_cfg", {})
    if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name") or "siglip" in model.lower():
        return "; its tokenizer (and any Hugging Face text tower config) is fetched from the hub on first use"
    return ""


def _preprocess_overrides(model_config: str | None) -> dict[str, Any]:
    if not model_config:
        return {}
    _model_cfg, preprocess = read_model_config(model_config)
    return {argument: preprocess[key] for key, argument in PREPROCESS_ARGUMENTS.items() if key in preprocess}


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but torch sees no CUDA device; use device=cpu")


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


# --- inputs and embeddings shared by the stages ---------------------------------------


def open_image(data: bytes | None) -> Image.Image | None:
    """The decoded image in its own mode (RGBA, P, L, ...), or None when there are no bytes or they do not decode.

    Not converted to RGB here: open_clip's preprocessing resizes first and converts to RGB last, as in its
    README (`preprocess(Image.open(path))`) and LAION's clip-retrieval.  Converting first gives other pixels
    for transparent images (PIL resizes RGBA with premultiplied alpha) and palette images (resized with
    nearest neighbour), so other scores than open_clip's.
    """
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def caption_text(sample: Sample) -> str | None:
    """The caption, or None when it is missing or blank: nothing to compare an image with."""
    if sample.caption is None or not sample.caption.strip():
        return None
    return sample.caption


def unscored_reason(sample: Sample, needs_caption: bool) -> str:
    """Why a model stage could not score `sample` (it has no score field)."""
    if sample.image is None:
        return "no_image"
    if needs_caption and caption_text(sample) is None:
        return "no_caption"
    return "undecodable_image"


def min_score_verdict(sample: Sample, field: str, threshold: float | None, low_reason: str, needs_caption: bool) -> Verdict:
    """Keep at or above `threshold` (None keeps all); an unscored sample is dropped with why it has no score."""
    if threshold is None:
        return KEEP
    score = sample.fields.get(field)
    if score is None:
        return drop(unscored_reason(sample, needs_caption))
    return KEEP if score >= threshold else drop(low_reason)


class ClipEncoder:
    """L2-normalised image and text embeddings from one loaded open_clip model."""

    def __init__(self, loaded: OpenClipModel, device: str):
        self.loaded = loaded
        self.device = device

    def encode_images(self, images: Sequence[Image.Image]) -> Any:
        import torch

        if not images:
            return torch.empty(0)
        pixels = torch.stack([self.loaded.preprocess(image) for image in images]).to(self.device)
        with torch.inference_mode():
            return self.loaded.model.encode_image(pixels, normalize=True).float().cpu()

    def encode_texts(self, texts: Sequence[str]) -> Any:
        import torch

        if not texts:
            return torch.empty(0)
        tokens = self.loaded.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            return self.loaded.model.encode_text(tokens, normalize=True).float().cpu()


def encoder_for(source: ModelSource) -> ClipEncoder:
    return ClipEncoder(load_model(source), source.device)
