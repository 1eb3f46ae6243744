"""Model loading: checks before the run, loading a user's checkpoint and config, the per-process cache."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.models import openclip as openclip_models
from pipeline.models.openclip import ModelLoadError, ModelSource, check_weights, load_model, register_model_config


def test_known_tag_is_accepted_without_download():
    description = check_weights("ViT-B-32-quickgelu", "openai")
    assert "tag 'openai'" in description and "hub" in description


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ModelLoadError, match="laion2b_s34b_b79k"):
        check_weights("ViT-B-32", "no_such_tag")


def test_missing_checkpoint_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "weights" / "model.pt"
    with pytest.raises(ModelLoadError, match="checkpoint file .*model.pt.* does not exist"):
        check_weights("ViT-B-32", str(missing))


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelLoadError, match="did you mean.*ViT-B-32"):
        check_weights("ViT-B-33", "openai")


def test_hub_schema_names_are_refused_before_any_download():
    with pytest.raises(ModelLoadError, match="not supported"):
        check_weights("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "")


def test_missing_and_malformed_config_files(tmp_path, tiny_clip):
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_weights("tiny-missing-config", tiny_clip.pretrained, str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"embed_dim": 32}')
    with pytest.raises(ModelLoadError, match="lacks vision_cfg, text_cfg"):
        check_weights("tiny-bad-config", tiny_clip.pretrained, str(bad))


def test_config_cannot_redefine_a_builtin_architecture(tiny_clip):
    with pytest.raises(ModelLoadError, match="already defines 'ViT-B-32'"):
        register_model_config("ViT-B-32", tiny_clip.model_config)


def test_hub_layout_config_with_preprocess(tmp_path, tiny_clip):
    model_cfg = json.loads(open(tiny_clip.model_config).read())
    hub_config = tmp_path / "open_clip_config.json"
    hub_config.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}))
    loaded = load_model(ModelSource("tiny-hub-layout", tiny_clip.pretrained, str(hub_config)))
    normalize = loaded.preprocess.transforms[-1]
    assert list(normalize.mean) == [0.5] * 3 and list(normalize.std) == [0.25] * 3


def test_loads_the_checkpoint_weights_and_caches(tiny_clip):
    source = ModelSource(tiny_clip.model, tiny_clip.pretrained, tiny_clip.model_config)
    openclip_models.clear_cache()
    torch.manual_seed(12345)  # a different random init: only the checkpoint can make the weights equal
    loaded = load_model(source)
    saved = torch.load(tiny_clip.pretrained, weights_only=True)
    assert torch.equal(loaded.model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"])
    assert not loaded.model.training
    assert load_model(source) is loaded
    assert loaded.tokenizer(["a cat"]).shape == (1, 16)  # context length from the tiny config


def test_checkpoint_of_another_architecture_is_a_clear_error(tiny_clip, tiny_coca):
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(ModelSource(tiny_coca.model, tiny_clip.pretrained, tiny_coca.model_config))


def test_cuda_without_a_gpu_is_refused(tiny_clip):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="CUDA"):
        check_weights(tiny_clip.model, tiny_clip.pretrained, tiny_clip.model_config, device="cuda")
