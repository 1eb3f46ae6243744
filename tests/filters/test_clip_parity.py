"""Scores equal the reference computations: open_clip's own model, preprocessing and tokenizer, and
the published formulas of LAION's aesthetic predictor and CLIP NSFW heads, on real encoded images."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from filters.aesthetic import Aesthetic
from filters.clip_score import ClipScore
from filters.nsfw import ClipHeadScorer, NsfwFilter
from pipeline.core.params import build
from pipeline.core.records import Sample
from tiny_openclip import sample_web_images, save_linear_head

CAPTIONS = ["a photo of a cat", "Ein rotes Auto vor dem Haus", "sunset over the sea, 1998", "x", "雪の富士山"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    return sample_web_images(tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def reference(tiny_clip, tmp_path_factory):
    """open_clip's own model, eval preprocessing and tokenizer for the tiny checkpoint, through its
    'local-dir:' route (config + weights in a folder), independent of how the stages load models."""
    folder = tmp_path_factory.mktemp("local-dir")
    config = Path(tiny_clip.model_config).read_text()
    (folder / "open_clip_config.json").write_text(f'{{"model_cfg": {config}, "preprocess_cfg": {{}}}}')
    shutil.copy(tiny_clip.pretrained, folder / "open_clip_pytorch_model.bin")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


def reference_image_embeddings(reference, encoded: list[bytes]) -> torch.Tensor:
    """L2-normalised, as open_clip's README computes them: preprocess(Image.open(file))."""
    model, preprocess, _ = reference
    pixels = torch.stack([preprocess(Image.open(io.BytesIO(data))) for data in encoded])
    with torch.no_grad():
        features = model.encode_image(pixels)
    return features / features.norm(dim=-1, keepdim=True)


def reference_clip_scores(reference, encoded: list[bytes], captions: list[str]) -> np.ndarray:
    model, _, tokenizer = reference
    with torch.no_grad():
        text = model.encode_text(tokenizer(captions))
    text = text / text.norm(dim=-1, keepdim=True)
    return (reference_image_embeddings(reference, encoded) * text).sum(dim=-1).numpy()


def samples(encoded: list[bytes], captions: list[str] | None = None) -> list[Sample]:
    captions = captions or ["a photo"] * len(encoded)
    return [Sample(key=f"{i:09d}", shard_id=0, url=f"http://example.invalid/{i}", caption=caption, image=data)
            for i, (data, caption) in enumerate(zip(encoded, captions))]


def run(stage, batch: list[Sample]) -> list[Sample]:
    stage.setup()
    stage.score(batch)
    return batch


def model_params(tiny_clip) -> dict:
    return {"model": tiny_clip.model, "pretrained": tiny_clip.pretrained, "model_config": tiny_clip.model_config}


def test_sample_images_cover_the_modes(images):
    modes = {kind: Image.open(io.BytesIO(data)).mode for kind, data in images.items()}
    assert modes == {"rgb": "RGB", "grayscale": "L", "palette": "P", "cmyk": "CMYK", "rgba": "RGBA"}
    rgb = Image.open(io.BytesIO(images["rgb"]))
    assert rgb.width != rgb.height


def test_clip_score_equals_open_clip(tiny_clip, reference, images):
    encoded = list(images.values())
    stage = ClipScore(build(ClipScore.Params, {**model_params(tiny_clip), "threshold": None}, "clip_score"))
    scored = run(stage, samples(encoded, CAPTIONS))
    expected = reference_clip_scores(reference, encoded, CAPTIONS)
    np.testing.assert_allclose([s.fields["clip_score"] for s in scored], expected, atol=TOLERANCE, rtol=0)


def test_clip_score_of_each_image_alone_equals_open_clip(tiny_clip, reference, images):
    stage = ClipScore(build(ClipScore.Params, {**model_params(tiny_clip), "threshold": None}, "clip_score"))
    for kind, data in images.items():
        score = run(stage, samples([data], ["a photo of a cat"]))[0].fields["clip_score"]
        expected = reference_clip_scores(reference, [data], ["a photo of a cat"])[0]
        assert abs(score - expected) < TOLERANCE, kind


def test_aesthetic_equals_laion_improved_predictor(tiny_clip, reference, images, tmp_path):
    # LAION's improved-aesthetic-predictor: MLP(normalized(encode_image(preprocess(image)))), the MLP a
    # chain of Linear layers (Dropout between, no activation), keys layers.0/2/4/6/7.
    head_path = tmp_path / "head.pth"
    head = save_linear_head(head_path, [32, 64, 16, 8, 4, 1])
    encoded = list(images.values())
    params = {**model_params(tiny_clip), "head_path": str(head_path)}
    scored = run(Aesthetic(build(Aesthetic.Params, params, "aesthetic")), samples(encoded))
    with torch.no_grad():
        expected = head(reference_image_embeddings(reference, encoded)).squeeze(1).numpy()
    np.testing.assert_allclose([s.fields["aesthetic_score"] for s in scored], expected, atol=TOLERANCE, rtol=0)


class LaionStandardisedHead(torch.nn.Module):
    """LAION-AI/CLIP-based-NSFW-Detector src/models.py NSFWModel_B32, as published (random weights)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = torch.nn.Module()
        self.norm.register_buffer("mean", torch.randn(dim) * 0.05)
        self.norm.register_buffer("variance", torch.rand(dim) * 0.01 + 0.001)
        self.linear_1, self.linear_2, self.linear_3 = (torch.nn.Linear(dim, 16), torch.nn.Linear(16, 16),
                                                       torch.nn.Linear(16, 1))

    def forward(self, x):
        x = (x - self.norm.mean) / (self.norm.variance.sqrt() + 1e-10)
        x = torch.relu(self.linear_1(x))
        x = torch.relu(self.linear_2(x))
        return torch.sigmoid(self.linear_3(x))


def laion_h14_style_head(dim: int) -> torch.nn.Module:
    """LAION's NSFWModel_H14 layout (Linear, ReLU, Dropout, ..., Linear, Linear), saved under `layers.`."""
    head = torch.nn.Module()
    head.layers = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                      torch.nn.Linear(16, 8), torch.nn.Linear(8, 1))
    head.forward = lambda x: head.layers(x).clamp(0, 1)  # its raw output is the score (probability mode)
    return head


HEADS = {"b32_l14_standardised": (LaionStandardisedHead, "logit"), "h14_layers": (laion_h14_style_head, "probability")}


@pytest.mark.parametrize("layout", sorted(HEADS))
def test_nsfw_clip_head_equals_laion_heads(tiny_clip, reference, images, tmp_path, layout):
    # LAION's reference: head(F.normalize(backbone(x))), on the embedding clip_score stores.
    build_head, output = HEADS[layout]
    torch.manual_seed(1)
    head = build_head(32).eval()
    head_path = tmp_path / "head.pth"
    torch.save(head.state_dict(), head_path)
    encoded = list(images.values())
    model, preprocess, _ = reference
    with torch.no_grad():
        embeddings = model.encode_image(torch.stack([preprocess(Image.open(io.BytesIO(d))) for d in encoded]))
        expected = head(torch.nn.functional.normalize(embeddings)).squeeze(1).numpy()
    batch = samples(encoded)
    for sample, embedding in zip(batch, embeddings.tolist()):
        sample.fields["clip_image_embedding"] = embedding
    np.testing.assert_allclose(ClipHeadScorer(head_path, output).scores(batch), expected, atol=TOLERANCE, rtol=0)
    params = {"clip_head_path": str(head_path), "clip_head_output": output}
    scored = run(NsfwFilter(build(NsfwFilter.Params, params, "nsfw")), batch)
    # The stage stores nsfw_score rounded to 4 decimals.
    np.testing.assert_allclose([s.fields["nsfw_score"] for s in scored], expected, atol=5e-5 + TOLERANCE, rtol=0)


def test_nsfw_clip_head_after_clip_score_equals_laion(tiny_clip, reference, images, tmp_path):
    torch.manual_seed(1)
    head = LaionStandardisedHead(32).eval()
    head_path = tmp_path / "b32.pth"
    torch.save(head.state_dict(), head_path)
    encoded = list(images.values())
    clip = ClipScore(build(ClipScore.Params, {**model_params(tiny_clip), "threshold": None, "store_embeddings": True},
                           "clip_score"))
    scored = run(NsfwFilter(build(NsfwFilter.Params, {"clip_head_path": str(head_path)}, "nsfw")),
                 run(clip, samples(encoded)))
    with torch.no_grad():
        expected = head(reference_image_embeddings(reference, encoded)).squeeze(1).numpy()
    # The stored embedding is float16 (clip_score's documented storage): about 3 significant digits.
    np.testing.assert_allclose([s.fields["nsfw_score"] for s in scored], expected, atol=5e-3, rtol=0)
