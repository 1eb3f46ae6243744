"""The `watermark` stage: PP-OCRv4 text detector + scoring rule, or a timm classifier."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.watermark_eval import evaluate, make_benchmark
from pipeline.models.common import decode_rgb
from filters.watermark import (
    CLASSIFIER_INPUT_SIDE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TextBox,
    WatermarkFilter,
    watermark_score,
)
from pipeline.core.params import ParamError, build
from pipeline.core.registry import get_stage
from pipeline.core.records import KEEP, Sample
from pipeline.core.stage import Filter, Needs


@pytest.fixture(scope="module")
def stage() -> WatermarkFilter:
    stage = WatermarkFilter()
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def benchmark() -> list:
    return make_benchmark(count=40, seed=0)


def _samples(images: list[bytes | None]) -> list[Sample]:
    return [Sample(key=f"{i:03d}", shard_id=0, url=f"http://x/{i}.jpg", image=data) for i, data in enumerate(images)]


def test_registered_as_image_model_stage():
    cls = get_stage("watermark")
    assert cls is WatermarkFilter
    assert issubclass(cls, Filter) and cls().needs() == Needs(image=True, model=True)
    assert cls.Params().action == "tag" and cls.Params().batch_size > 0


def test_precision_and_recall_on_generated_benchmark(stage, benchmark):
    report = evaluate(stage, benchmark)
    print(
        f"watermark benchmark: precision={report.precision:.3f} recall={report.recall:.3f} "
        f"({report.seconds_per_image * 1000:.0f} ms/image) misses={report.misses}"
    )
    assert sum(image.has_watermark for image in benchmark) == 20
    assert report.precision >= 0.8
    assert report.recall >= 0.8


def test_detector_loads_from_the_installed_package_offline(monkeypatch, benchmark):
    import socket

    import rapidocr_onnxruntime

    def no_network(*args):
        raise AssertionError("the watermark stage tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    stage = WatermarkFilter()
    stage.setup()
    assert stage.model_path.is_relative_to(Path(rapidocr_onnxruntime.__file__).parent)
    samples = _samples([benchmark[0].jpeg])
    stage.score(samples)
    assert "watermark_score" in samples[0].fields


def test_batch_gives_the_same_scores_as_one_by_one(stage, benchmark):
    images = [image.jpeg for image in benchmark[:4]]
    together = _samples(images)
    stage.score(together)
    alone = [_samples([data])[0] for data in images]
    for sample in alone:
        stage.score([sample])
    assert [s.fields for s in together] == [s.fields for s in alone]


def test_unreadable_images_are_dropped_without_spoiling_the_batch(stage, benchmark):
    samples = _samples([b"\x89PNG broken", benchmark[1].jpeg, None])
    stage.score(samples)
    assert [stage.keep(s).reason for s in samples] == ["image_unreadable", None, "image_unreadable"]


@pytest.mark.parametrize(
    "action, score, expected",
    [("tag", 0.99, None), ("drop", 0.5, "watermark"), ("drop", 0.49, None), ("drop", 0.9, "watermark")],
)
def test_threshold_and_action(action, score, expected):
    stage = WatermarkFilter(WatermarkFilter.Params(threshold=0.5, action=action))
    sample = _samples([b"unused"])[0]
    sample.fields["watermark_score"] = score
    assert stage.keep(sample).reason == expected


def test_params_from_recipe_strings():
    params = build(WatermarkFilter.Params, {"action": "drop", "threshold": "0.7", "classifier_path": "none"}, "wm")
    assert (params.action, params.threshold, params.classifier_path) == ("drop", 0.7, None)
    with pytest.raises(ParamError, match="multiple of 32"):
        build(WatermarkFilter.Params, {"detector_side": "500"}, "wm")
    with pytest.raises(ParamError, match="not one of"):
        build(WatermarkFilter.Params, {"action": "blur"}, "wm")


# The scoring rule on hand-made boxes ------------------------------------------


def _box(confidence=0.8, strokes=0.5, thickness=0.06, height=20.0, area=0.02, centre=(0.8, 0.93)) -> TextBox:
    return TextBox(confidence, strokes, thickness, height, area, centre)


def test_no_text_scores_zero():
    assert watermark_score([]) == 0.0


def test_corner_credit_scores_above_the_default_threshold():
    assert watermark_score([_box()]) >= 0.5


def test_flat_or_thick_regions_are_not_text():
    assert watermark_score([_box(strokes=0.12)]) < 0.1  # the detector fired on a smooth shape
    assert watermark_score([_box(thickness=0.55, area=0.3)]) == 0.0  # half the image tall: not a text line


def test_placement_tiling_and_area_raise_the_score():
    middle_left = _box(centre=(0.2, 0.5), area=0.005)
    lone = watermark_score([middle_left])
    assert lone == pytest.approx(0.55 + 0.15 * 0.005 / 0.03)  # clear text anywhere is already >= 0.55
    assert watermark_score([_box(centre=(0.5, 0.5), area=0.005)]) > lone  # centred
    tiles = [_box(centre=(0.2 + 0.1 * i, 0.4), area=0.005, height=20 + i) for i in range(6)]
    assert watermark_score(tiles) > lone  # repeated, same size
    assert watermark_score([_box(centre=(0.2, 0.5), area=0.03)]) > lone  # bigger


def test_weak_detections_count_less():
    assert watermark_score([_box(confidence=0.55)]) < watermark_score([_box(confidence=0.75)])


# LAION-style timm classifier ------------------------------------------------


def _classifier_stage(tmp_path, model: torch.nn.Module, **params) -> WatermarkFilter:
    path = tmp_path / "watermark_model.pt"
    torch.save(model.state_dict(), path)
    stage = WatermarkFilter(WatermarkFilter.Params(classifier_path=str(path), classifier_arch="resnet10t", **params))
    stage.setup()
    return stage


def _expected_probabilities(model: torch.nn.Module, images: list[bytes], watermark_class: int) -> list[float]:
    size = (CLASSIFIER_INPUT_SIDE, CLASSIFIER_INPUT_SIDE)
    pixels = np.stack([np.asarray(decode_rgb(data).resize(size, Image.BILINEAR), np.float32) for data in images])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255.0
    batch = (batch - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(model.eval()(batch), dim=1)[:, watermark_class].tolist()


def _tiny_resnet() -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()


def test_classifier_with_a_linear_head(tmp_path, benchmark):
    model = _tiny_resnet()
    stage = _classifier_stage(tmp_path, model, classifier_watermark_class=1)
    images = [image.jpeg for image in benchmark[:3]]
    samples = _samples(images)
    stage.score(samples)
    expected = _expected_probabilities(model, images, 1)
    assert [s.fields["watermark_score"] for s in samples] == pytest.approx(expected, abs=1e-3)


def test_classifier_with_a_laion_style_mlp_head(tmp_path, benchmark):
    model = _tiny_resnet()
    model.fc = torch.nn.Sequential(  # the shape of LAION's head, scaled down
        torch.nn.Linear(model.num_features, 24),
        torch.nn.ReLU(),
        torch.nn.Dropout(p=0.3),
        torch.nn.Linear(24, 8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 2),
    )
    model.eval()
    stage = _classifier_stage(tmp_path, model)
    images = [image.jpeg for image in benchmark[:3]]
    samples = _samples(images)
    stage.score(samples)
    expected = _expected_probabilities(model, images, 0)
    assert [s.fields["watermark_score"] for s in samples] == pytest.approx(expected, abs=1e-3)
    assert all(stage.keep(s) == KEEP for s in samples)  # tag mode


def test_classifier_class_index_is_checked(tmp_path):
    with pytest.raises(ValueError, match="2 outputs"):
        _classifier_stage(tmp_path, _tiny_resnet(), classifier_watermark_class=2)


def test_missing_classifier_file_or_unknown_arch_fail_the_preflight_check(tmp_path):
    stage = WatermarkFilter(WatermarkFilter.Params(classifier_path=str(tmp_path / "nope.pt")))
    with pytest.raises(FileNotFoundError, match="watermark classifier"):
        stage.check()
    with pytest.raises(FileNotFoundError, match="watermark classifier"):
        stage.setup()
    (tmp_path / "model.pt").write_bytes(b"")
    stage = WatermarkFilter(WatermarkFilter.Params(classifier_path=str(tmp_path / "model.pt"), classifier_arch="resnet9000"))
    with pytest.raises(ValueError, match="no model 'resnet9000'"):
        stage.check()
    WatermarkFilter().check()  # the packaged detector is there


def test_stages_set_up_in_one_process_share_one_detector_session():
    first, second = WatermarkFilter(), WatermarkFilter(WatermarkFilter.Params(detector_side=256))
    first.setup()
    second.setup()
    assert first._scorer._detector._session is second._scorer._detector._session
