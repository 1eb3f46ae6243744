"""Tiny, randomly initialised open_clip models saved the way a user's would be.

Each builder writes an open_clip model-config JSON and a checkpoint (state_dict)
into a directory; tests then load them back through the stages' own path,
`pretrained=<checkpoint>` and `model_config=<json>`.  Weights are random but
seeded, so every run builds the same model.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.records import Sample

VOCAB_SIZE = 49408  # open_clip's BPE vocabulary: the tokenizer emits ids up to here

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": VOCAB_SIZE, "width": 32, "heads": 2, "layers": 1},
}

TINY_COCA_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16,
        "attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 4, "output_tokens": True,
    },
    "text_cfg": {
        "context_length": 24, "vocab_size": VOCAB_SIZE, "width": 32, "heads": 2, "layers": 1,
        "embed_cls": True, "output_tokens": True,
    },
    "multimodal_cfg": {
        "context_length": 24, "vocab_size": VOCAB_SIZE, "width": 32, "heads": 2, "layers": 1,
        "attn_pooler_heads": 2, "dim_head": 16,
    },
    "custom_text": True,
}


@dataclass(frozen=True)
class SavedModel:
    model: str  # the name the config is registered under
    pretrained: str  # checkpoint path
    model_config: str  # config JSON path


def save_tiny_clip(directory: Path, name: str = "tiny-clip-test", seed: int = 0) -> SavedModel:
    from open_clip import CLIP

    return _save(directory, name, TINY_CLIP_CONFIG, lambda cfg: CLIP(**cfg), seed)


def save_tiny_coca(directory: Path, name: str = "tiny-coca-test", seed: int = 0) -> SavedModel:
    from open_clip import CoCa

    def build(cfg):
        cfg = dict(cfg)
        cfg.pop("custom_text")  # a factory switch, not a CoCa argument
        return CoCa(**cfg)

    return _save(directory, name, TINY_COCA_CONFIG, build, seed)


def save_tiny_clip_torchscript(directory: Path, name: str = "tiny-clip-test", seed: int = 0) -> SavedModel:
    """The tiny CLIP as a TorchScript archive laid out like OpenAI's CLIP releases (ViT-B-32.pt).

    Its state_dict holds the weights plus OpenAI's `input_resolution`,
    `context_length` and `vocab_size` entries, and no attention mask (OpenAI's
    is a plain attribute; open_clip's a non-persistent buffer, which
    TorchScript would save).
    """
    saved = save_tiny_clip(directory, name, seed)
    from open_clip import CLIP

    model = CLIP(**json.loads(json.dumps(TINY_CLIP_CONFIG)))
    model.load_state_dict(torch.load(saved.pretrained, weights_only=True))
    model.attn_mask = model._buffers.pop("attn_mask")
    for key, value in (("input_resolution", 32), ("context_length", 16), ("vocab_size", VOCAB_SIZE)):
        model.__dict__.pop(key, None)  # open_clip keeps some as plain ints
        model.register_buffer(key, torch.tensor(value))
    archive = directory / f"{name}-jit.pt"
    torch.jit.script(model.eval()).save(str(archive))
    return SavedModel(name, str(archive), saved.model_config)


def save_linear_head(path: Path, layer_sizes: list[int], seed: int = 0) -> torch.nn.Sequential:
    """A LAION-v2-style head (Linear layers with dropout between, keys layers.N.*) saved as a state_dict."""
    torch.manual_seed(seed)
    modules: list[torch.nn.Module] = []
    for n_in, n_out in zip(layer_sizes, layer_sizes[1:]):
        modules += [torch.nn.Linear(n_in, n_out), torch.nn.Dropout(0.1)]
    head = torch.nn.Sequential(*modules[:-1]).eval()
    torch.save({f"layers.{key}": value for key, value in head.state_dict().items()}, path)
    return head


def _save(directory: Path, name: str, config: dict, build, seed: int) -> SavedModel:
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"{name}-config.json"  # deliberately not <name>.json: the name comes from `model`
    config_path.write_text(json.dumps(config))
    torch.manual_seed(seed)
    model = build(json.loads(json.dumps(config)))
    checkpoint = directory / f"{name}.pt"
    torch.save(model.state_dict(), checkpoint)
    return SavedModel(name, str(checkpoint), str(config_path))


def png_bytes(seed: int, size: int = 40) -> bytes:
    """A small random RGB image, PNG-encoded."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_sample(index: int, caption: str | None = "a photo of a cat", image: bytes | None = None) -> Sample:
    return Sample(key=f"{index:09d}", shard_id=0, url=f"http://example.invalid/{index}.png",
                  caption=caption, image=png_bytes(index) if image is None else image)


def sample_web_images(directory: Path) -> dict[str, bytes]:
    """Encoded images of the bundled sample web, one per kind a model stage must read the same way as open_clip:
    a non-square RGB JPEG, a grayscale JPEG, a palette PNG, a CMYK JPEG, and that photo as a cut-out RGBA PNG
    (transparent at the edges)."""
    import numpy as np
    from PIL import Image

    from pipeline.demo.sample_web import generate_sample_web

    wanted = {"rgb": ("JPEG", "RGB"), "grayscale": ("JPEG", "L"), "palette": ("PNG", "P"), "cmyk": ("JPEG", "CMYK")}
    found: dict[str, bytes] = {}
    for row in generate_sample_web(directory, n_rows=40, seed=0):
        path = directory / row["path"]
        try:
            data = path.read_bytes()
            image = Image.open(io.BytesIO(data))
        except OSError:
            continue  # the sample web plants broken links and files too
        for kind, (fmt, mode) in wanted.items():
            if kind not in found and (image.format, image.mode) == (fmt, mode) and image.width != image.height:
                found[kind] = data
            elif kind not in found and kind != "rgb" and (image.format, image.mode) == (fmt, mode):
                found[kind] = data
    photo = Image.open(io.BytesIO(found["rgb"])).convert("RGBA")
    y, x = np.mgrid[0:photo.height, 0:photo.width]
    alpha = np.clip(255 * (1.5 - np.hypot(x / photo.width - 0.5, y / photo.height - 0.5) * 4), 0, 255)
    photo.putalpha(Image.fromarray(alpha.astype(np.uint8)))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return {**found, "rgba": buffer.getvalue()}
