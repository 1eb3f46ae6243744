"""The activation a CLIP checkpoint needs: open_clip's pretrained table, for tags and for local files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

from pipeline.models import openclip as openclip_models
from pipeline.models.openclip import ModelLoadError, ModelSource, check_weights, load_model
from tiny_openclip import save_tiny_clip, save_tiny_clip_torchscript

# Preprocessing of the tags added to open_clip's table below: unlike the default, so a test sees it applied.
TAG_MEAN, TAG_STD = (0.25, 0.5, 0.75), (0.2, 0.3, 0.4)


def activations(model) -> set[type]:
    """The activation classes in the model's transformer MLPs."""
    return {type(block.mlp.gelu) for block in model.visual.transformer.resblocks} | {
        type(block.mlp.gelu) for block in model.transformer.resblocks}


@pytest.fixture
def tagged_tiny(tmp_path, monkeypatch):
    """A tiny GELU architecture that open_clip's table lists with one QuickGELU tag and one GELU tag, like ViT-B-32."""
    saved = save_tiny_clip(tmp_path, name="tiny-tagged-test")
    check_weights(saved.model, saved.pretrained, saved.model_config)  # registers the architecture
    tag = dict(url="", hf_hub="", mean=TAG_MEAN, std=TAG_STD, interpolation="bicubic", resize_mode="shortest")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, saved.model,
                        {"openai": {**tag, "quick_gelu": True}, "gelu_tag": tag})
    yield saved
    openclip_models.clear_cache()


def test_openai_tag_on_a_gelu_architecture_is_built_with_quickgelu():
    # open_clip's ViT-B-32 config is GELU; its `openai` weights need QuickGELU (open_clip only warns).
    assert "QuickGELU, i.e. ViT-B-32-quickgelu" in check_weights("ViT-B-32", "openai")
    assert "with GELU" in check_weights("ViT-B-32", "laion2b_s34b_b79k")
    assert "'openai' weights with QuickGELU" in check_weights("ViT-B-32-quickgelu", "openai")


def test_checkpoint_file_of_an_architecture_with_both_activations_is_refused(tmp_path):
    checkpoint = tmp_path / "ViT-B-32.pt"
    torch.save({"logit_scale": torch.zeros(())}, checkpoint)
    with pytest.raises(ModelLoadError, match="pretrained_tag.*ViT-B-32-quickgelu"):
        check_weights("ViT-B-32", str(checkpoint))
    assert "QuickGELU" in check_weights("ViT-B-32", str(checkpoint), pretrained_tag="openai")
    assert "with GELU" in check_weights("ViT-B-32", str(checkpoint), pretrained_tag="laion2b_s34b_b79k")
    assert "QuickGELU" in check_weights("ViT-B-32-quickgelu", str(checkpoint))  # the name says it


def test_unknown_or_contradicting_pretrained_tag_is_refused(tmp_path):
    checkpoint = tmp_path / "ViT-B-32.pt"
    torch.save({}, checkpoint)
    with pytest.raises(ModelLoadError, match="not one of its open_clip tags"):
        check_weights("ViT-B-32", str(checkpoint), pretrained_tag="no_such_tag")
    with pytest.raises(ModelLoadError, match="disagree"):
        check_weights("ViT-B-32", "openai", pretrained_tag="laion2b_s34b_b79k")


def test_torchscript_archive_is_read_as_openai_weights(tmp_path):
    # OpenAI publishes its CLIP weights as TorchScript archives: such a file needs no pretrained_tag.
    archive = save_tiny_clip_torchscript(tmp_path)
    assert "'openai' weights with QuickGELU" in check_weights("ViT-B-32", archive.pretrained)


def test_torchscript_archive_loads(tmp_path):
    # torch.load refuses TorchScript archives with weights_only=True: the old code could not load them.
    archive = save_tiny_clip_torchscript(tmp_path, name="tiny-jit-test")
    loaded = load_model(ModelSource(archive.model, archive.pretrained, archive.model_config))
    plain = torch.load(tmp_path / "tiny-jit-test.pt", weights_only=True)
    assert torch.equal(loaded.model.state_dict()["visual.conv1.weight"], plain["visual.conv1.weight"])


def test_local_checkpoint_with_pretrained_tag_gets_the_tags_activation_and_preprocessing(tagged_tiny):
    source = ModelSource(tagged_tiny.model, tagged_tiny.pretrained, tagged_tiny.model_config, pretrained_tag="openai")
    loaded = load_model(source)
    assert activations(loaded.model) == {QuickGELU}
    normalize = loaded.preprocess.transforms[-1]
    assert tuple(normalize.mean) == TAG_MEAN and tuple(normalize.std) == TAG_STD
    reference = open_clip.create_model(tagged_tiny.model, pretrained=tagged_tiny.pretrained, force_quick_gelu=True)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(loaded.model.encode_image(pixels), reference.eval().encode_image(pixels), atol=1e-6)
    gelu = load_model(ModelSource(tagged_tiny.model, tagged_tiny.pretrained, tagged_tiny.model_config,
                                  pretrained_tag="gelu_tag"))
    assert activations(gelu.model) == {torch.nn.GELU}


def test_local_checkpoint_without_tag_is_refused_when_the_table_has_both(tagged_tiny):
    with pytest.raises(ModelLoadError, match="either activation"):
        load_model(ModelSource(tagged_tiny.model, tagged_tiny.pretrained, tagged_tiny.model_config))


def test_quickgelu_architecture_with_a_gelu_tag_is_refused(tagged_tiny, tmp_path, monkeypatch):
    config = json.loads(Path(tagged_tiny.model_config).read_text())
    quick_config = tmp_path / "quick.json"
    quick_config.write_text(json.dumps({**config, "quick_gelu": True}))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-quick-test", {"gelu_tag": {"url": ""}})
    with pytest.raises(ModelLoadError, match="uses QuickGELU but the 'gelu_tag' weights were trained with GELU"):
        check_weights("tiny-quick-test", tagged_tiny.pretrained, str(quick_config), pretrained_tag="gelu_tag")


def test_model_config_leaves_no_folder_in_the_temp_directory(tiny_clip, tmp_path):
    # One process, as a Beam worker: it registers a model_config and loads the model.
    temp = tmp_path / "tmp"
    temp.mkdir()
    script = ("import sys; from pipeline.models.openclip import ModelSource, load_model; "
              "print(load_model(ModelSource(*sys.argv[1:4])).model.visual.conv1.weight.shape)")
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, tiny_clip.model, tiny_clip.pretrained, tiny_clip.model_config],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(temp.iterdir()) == []
