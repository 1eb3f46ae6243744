"""aesthetic: loading LAION-style heads and scoring stored or freshly computed CLIP embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from filters.aesthetic import Aesthetic, load_head
from filters.clip_score import ClipScore
from pipeline.models.openclip import ModelLoadError
from pipeline.core.registry import get_stage
from tiny_openclip import image_sample, save_linear_head

EMBED_DIM = 32  # the tiny CLIP's


def tiny_params(tiny_clip, head_path, **values) -> Aesthetic.Params:
    return Aesthetic.Params(head_path=str(head_path), model=tiny_clip.model, pretrained=tiny_clip.pretrained,
                            model_config=tiny_clip.model_config, **values)


def test_registered():
    assert get_stage("aesthetic") is Aesthetic


def test_loads_a_v2_style_head(tmp_path):
    reference = save_linear_head(tmp_path / "head.pth", [EMBED_DIM, 16, 8, 1])
    head = load_head(str(tmp_path / "head.pth"))
    x = torch.randn(4, EMBED_DIM)
    with torch.no_grad():
        torch.testing.assert_close(head(x), reference(x))


def test_loads_a_v1_linear_head_and_natural_layer_order(tmp_path):
    linear = torch.nn.Linear(EMBED_DIM, 1)
    torch.save({"state_dict": linear.state_dict()}, tmp_path / "v1.pth")
    x = torch.randn(3, EMBED_DIM)
    with torch.no_grad():
        torch.testing.assert_close(load_head(str(tmp_path / "v1.pth"))(x), linear(x))
    # layers.10 comes after layers.2, not before (string order would put it first).
    chain = {"layers.2.weight": torch.zeros(8, EMBED_DIM), "layers.10.weight": torch.zeros(1, 8)}
    torch.save(chain, tmp_path / "order.pth")
    assert [layer.in_features for layer in load_head(str(tmp_path / "order.pth"))] == [EMBED_DIM, 8]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not a checkpoint", "not a torch state_dict"),
    ({"layers.0.weight": torch.zeros(8, EMBED_DIM), "layers.1.weight": torch.zeros(1, 4)}, "do not chain"),
    ({"weight": torch.zeros(3, EMBED_DIM)}, "outputs 3 values"),
    ({"scale": torch.zeros(3)}, "no linear layer"),
])
def test_bad_heads_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "head.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ModelLoadError, match=message):
        load_head(str(path))
    with pytest.raises(ModelLoadError, match="head_path is required"):
        load_head(None)


def test_reuses_stored_embeddings_without_loading_clip(tmp_path):
    reference = save_linear_head(tmp_path / "head.pth", [EMBED_DIM, 4, 1])
    # A CLIP that cannot load: the stage must not need it when the embedding is stored.
    stage = Aesthetic(Aesthetic.Params(head_path=str(tmp_path / "head.pth"), pretrained=str(tmp_path / "gone.pt")))
    stage.setup()
    embedding = torch.nn.functional.normalize(torch.randn(EMBED_DIM), dim=0)
    sample = image_sample(0)
    sample.fields["clip_image_embedding"] = embedding.half().tolist()
    stage.score([sample])
    with torch.no_grad():
        expected = reference(embedding.unsqueeze(0)).item()
    assert sample.fields["aesthetic_score"] == pytest.approx(expected, abs=2e-3)


def test_computes_embeddings_like_clip_score_stores_them(tmp_path, tiny_clip):
    save_linear_head(tmp_path / "head.pth", [EMBED_DIM, 4, 1])
    computing = Aesthetic(tiny_params(tiny_clip, tmp_path / "head.pth"))
    computing.setup()
    fresh = [image_sample(i) for i in range(4)]
    computing.score(fresh)

    clip = ClipScore(ClipScore.Params(model=tiny_clip.model, pretrained=tiny_clip.pretrained,
                                      model_config=tiny_clip.model_config, store_embeddings=True))
    clip.setup()
    stored = [image_sample(i) for i in range(4)]
    clip.score(stored)
    computing.score(stored)
    fresh_scores = [s.fields["aesthetic_score"] for s in fresh]
    assert len(set(fresh_scores)) == 4
    np.testing.assert_allclose([s.fields["aesthetic_score"] for s in stored], fresh_scores, atol=2e-3)


def test_threshold_and_undecodable_image(tmp_path, tiny_clip):
    save_linear_head(tmp_path / "head.pth", [EMBED_DIM, 1])
    samples = [image_sample(i) for i in range(4)] + [image_sample(9, image=b"broken")]
    scorer = Aesthetic(tiny_params(tiny_clip, tmp_path / "head.pth"))
    scorer.setup()
    scorer.score(samples)
    assert samples[-1].fields["aesthetic_score"] is None
    cutoff = float(np.median([s.fields["aesthetic_score"] for s in samples[:4]]))
    stage = Aesthetic(tiny_params(tiny_clip, tmp_path / "head.pth", threshold=cutoff))
    verdicts = [stage.keep(s) for s in samples]
    assert [v.keep for v in verdicts[:4]] == [s.fields["aesthetic_score"] >= cutoff for s in samples[:4]]
    assert {v.reason for v in verdicts[:4] if not v.keep} == {"low_aesthetic_score"}
    assert verdicts[-1].reason == "undecodable_image"
    assert all(Aesthetic(tiny_params(tiny_clip, tmp_path / "head.pth")).keep(s).keep for s in samples)


def test_stores_the_embeddings_it_computed_not_the_ones_it_reused(tmp_path, tiny_clip):
    save_linear_head(tmp_path / "head.pth", [EMBED_DIM, 1])
    stage = Aesthetic(tiny_params(tiny_clip, tmp_path / "head.pth", store_embeddings=True))
    stage.setup()
    reused, computed = image_sample(0), image_sample(1)
    reused.fields["clip_image_embedding"] = [1.0] + [0.0] * (EMBED_DIM - 1)
    stage.score([reused, computed])
    assert reused.fields["aesthetic_image_embedding"] is None  # it is clip_score's, stored there
    clip = ClipScore(ClipScore.Params(model=tiny_clip.model, pretrained=tiny_clip.pretrained,
                                      model_config=tiny_clip.model_config, store_embeddings=True))
    clip.setup()
    again = image_sample(1)
    clip.score([again])
    assert computed.fields["aesthetic_image_embedding"] == again.fields["clip_image_embedding"]
    unstored = image_sample(1)
    off = Aesthetic(tiny_params(tiny_clip, tmp_path / "head.pth"))
    off.setup()
    off.score([unstored])
    assert "aesthetic_image_embedding" not in unstored.fields  # off by default
