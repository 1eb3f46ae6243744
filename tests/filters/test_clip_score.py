"""The clip_score stage on a tiny random open_clip model loaded from a checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.models import openclip as openclip_models
from filters.clip_score import ClipScore
from pipeline.models.openclip import ModelLoadError
from pipeline.core.params import build
from pipeline.core.registry import get_stage
from tiny_openclip import image_sample

CAPTIONS = ["a photo of a cat", "a red car", "text", "two dogs on a beach", "a chart", "sunset"]


def make_stage(tiny_clip, **values) -> ClipScore:
    params = build(ClipScore.Params, {"model": tiny_clip.model, "pretrained": tiny_clip.pretrained,
                                      "model_config": tiny_clip.model_config, **values}, "clip_score")
    stage = ClipScore(params)
    stage.setup()
    return stage


def scored(stage, samples):
    stage.score(samples)
    return samples


def test_registered():
    assert get_stage("clip_score") is ClipScore


def test_scores_are_cosines_and_deterministic(tiny_clip):
    first = scored(make_stage(tiny_clip), [image_sample(i, c) for i, c in enumerate(CAPTIONS)])
    openclip_models.clear_cache()  # a fresh load from the checkpoint gives the same scores
    second = scored(make_stage(tiny_clip), [image_sample(i, c) for i, c in enumerate(CAPTIONS)])
    scores = [s.fields["clip_score"] for s in first]
    assert all(isinstance(v, float) and -1.0 <= v <= 1.0 for v in scores)
    assert len(set(scores)) == len(scores)  # image and caption both matter
    assert scores == [s.fields["clip_score"] for s in second]


def test_batched_equals_one_by_one(tiny_clip):
    stage = make_stage(tiny_clip)
    batched = [s.fields["clip_score"] for s in scored(stage, [image_sample(i, c) for i, c in enumerate(CAPTIONS)])]
    single = [scored(stage, [image_sample(i, c)])[0].fields["clip_score"] for i, c in enumerate(CAPTIONS)]
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_threshold(tiny_clip):
    samples = scored(make_stage(tiny_clip), [image_sample(i, c) for i, c in enumerate(CAPTIONS)])
    median = float(np.median([s.fields["clip_score"] for s in samples]))
    stage = ClipScore(ClipScore.Params(threshold=median))
    verdicts = [stage.keep(s) for s in samples]
    for sample, verdict in zip(samples, verdicts):
        assert verdict.keep == (sample.fields["clip_score"] >= median)
        assert verdict.reason in (None, "low_clip_score")
    assert 0 < sum(v.keep for v in verdicts) < len(samples)


def test_no_caption_and_bad_image(tiny_clip):
    stage = make_stage(tiny_clip, store_embeddings=True)
    no_caption, blank, broken, no_image = (image_sample(0, None), image_sample(1, "  "),
                                           image_sample(2, "x", image=b"not an image"), image_sample(3, "x"))
    no_image.image = None
    stage.score([no_caption, blank, broken, no_image])
    for sample in (no_caption, blank, broken, no_image):
        assert sample.fields["clip_score"] is None
    assert len(no_caption.fields["clip_image_embedding"]) == 32  # still useful without a caption
    assert no_caption.fields["clip_text_embedding"] is None
    assert [stage.keep(s).reason for s in (no_caption, blank, broken, no_image)] == [
        "no_caption", "no_caption", "undecodable_image", "no_image"]
    tag_only = ClipScore(ClipScore.Params(threshold=None))
    assert all(tag_only.keep(s).keep for s in (no_caption, broken))


def test_stored_embeddings_are_normalised_float16(tiny_clip):
    samples = scored(make_stage(tiny_clip, store_embeddings=True), [image_sample(i, c) for i, c in enumerate(CAPTIONS)])
    for sample in samples:
        image = np.array(sample.fields["clip_image_embedding"])
        text = np.array(sample.fields["clip_text_embedding"])
        assert image.shape == text.shape == (32,)
        assert np.array_equal(image.astype(np.float16).astype(np.float64), image)  # exactly float16 values
        assert abs(np.linalg.norm(image) - 1) < 2e-3 and abs(np.linalg.norm(text) - 1) < 2e-3
        assert abs(float(image @ text) - sample.fields["clip_score"]) < 5e-3  # float16 rounding
    assert "clip_image_embedding" not in scored(make_stage(tiny_clip), [image_sample(0)])[0].fields


def test_missing_checkpoint_fails_check_and_setup(tiny_clip, tmp_path):
    stage = ClipScore(ClipScore.Params(model=tiny_clip.model, pretrained=str(tmp_path / "gone.pt"),
                                       model_config=tiny_clip.model_config))
    with pytest.raises(ModelLoadError, match="gone.pt.*does not exist"):
        stage.check()
    with pytest.raises(ModelLoadError, match="gone.pt.*does not exist"):
        stage.setup()
    make_stage(tiny_clip).check()  # an existing checkpoint passes
