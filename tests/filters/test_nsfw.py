"""The `nsfw` stage: NudeNet's packaged ONNX detector, or a CLIP-embedding head.

Only benign generated images are used; the aggregation rule is checked on
synthetic detector outputs instead of on explicit pictures.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipeline.models.common import (
    NUDENET_CLASSES,
    forget_nudenet_detections,
    nudenet_input,
    summarise_nudenet,
)
from filters.nsfw import SEXUAL_EXPOSED_CLASSES, NsfwFilter, exposed_confidence
from pipeline.core.params import ParamError, build
from pipeline.core.registry import get_stage
from pipeline.core.records import KEEP, Sample
from pipeline.core.stage import Filter, Needs


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _benign_images() -> list[bytes]:
    rng = np.random.default_rng(7)
    images = []
    for width, height in [(320, 240), (256, 384), (400, 400), (640, 360), (200, 300), (300, 200)]:
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        color = rng.uniform(0.2, 1.0, 3)[None, None, :]
        image = Image.fromarray(np.broadcast_to(ramp * color, (height, width, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            draw.rectangle((x, y, x + 40, y + 30), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        images.append(_jpeg(image))
    return images


def _samples(images: list[bytes | None]) -> list[Sample]:
    return [Sample(key=f"{i:03d}", shard_id=0, url=f"http://x/{i}.jpg", image=data) for i, data in enumerate(images)]


@pytest.fixture(scope="module")
def stage() -> NsfwFilter:
    stage = NsfwFilter()
    stage.setup()
    return stage


def test_registered_as_image_model_stage():
    cls = get_stage("nsfw")
    assert cls is NsfwFilter
    assert issubclass(cls, Filter) and cls().needs() == Needs(image=True, model=True)
    assert cls.Params().action == "tag" and cls.Params().batch_size > 0


def test_params_from_recipe_strings():
    params = build(NsfwFilter.Params, {"action": "drop", "threshold": "0.8", "clip_head_path": "null"}, "nsfw")
    assert (params.action, params.threshold, params.clip_head_path) == ("drop", 0.8, None)
    with pytest.raises(ParamError, match="not one of"):
        build(NsfwFilter.Params, {"clip_head_output": "logits"}, "nsfw")


def test_detector_loads_from_the_installed_package_offline(monkeypatch):
    import socket

    import nudenet

    def no_network(*args):
        raise AssertionError("the nsfw stage tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    stage = NsfwFilter()
    stage.setup()
    assert stage.model_path == Path(nudenet.__file__).parent / "320n.onnx"
    samples = _samples(_benign_images()[:1])
    stage.score(samples)
    assert "nsfw_score" in samples[0].fields


def test_benign_images_score_low(stage):
    samples = _samples(_benign_images())
    stage.score(samples)
    scores = [s.fields["nsfw_score"] for s in samples]
    print("nsfw scores of benign images:", scores)
    assert all(0.0 <= score < 0.2 for score in scores)
    assert all(stage.keep(s) == KEEP for s in samples)


def test_batch_gives_the_same_scores_as_one_by_one(stage):
    images = _benign_images()
    together = _samples(images)
    stage.score(together)
    forget_nudenet_detections()  # else the same bytes are not run again
    alone = [_samples([data])[0] for data in images]
    for sample in alone:
        stage.score([sample])
    assert [s.fields["nsfw_score"] for s in together] == pytest.approx(
        [s.fields["nsfw_score"] for s in alone], abs=1e-4
    )


def test_detector_side_sets_the_input_size_and_is_not_mixed_with_other_sides(monkeypatch):
    from pipeline.models import common as model_common

    forget_nudenet_detections()
    shapes = []
    session = model_common.nudenet_session()
    original_run = session.run

    class Recording:  # onnxruntime sessions do not take new attributes: wrap instead
        def run(self, outputs, feeds):
            shapes.append(next(iter(feeds.values())).shape)
            return original_run(outputs, feeds)

        def get_inputs(self):
            return session.get_inputs()

    monkeypatch.setattr(model_common, "nudenet_session", lambda: Recording())
    images = _benign_images()[:2]
    scored = {}
    for side in (320, 256, 320):  # the second 320 is answered from memory
        stage = NsfwFilter(NsfwFilter.Params(detector_side=side))
        stage.setup()
        samples = _samples(images)
        stage.score(samples)
        scored[side] = [s.fields["nsfw_score"] for s in samples]
    assert shapes == [(2, 3, 320, 320), (2, 3, 256, 256)]
    assert all(0.0 <= score < 0.2 for score in scored[256])


@pytest.mark.parametrize("side", [0, 32, 300])
def test_detector_side_must_be_a_multiple_of_32(side):
    with pytest.raises(ParamError, match="multiple of 32"):
        NsfwFilter.Params(detector_side=side)


def test_preprocessing_matches_nudenet():
    from nudenet.nudenet import _read_image

    image = Image.open(io.BytesIO(_benign_images()[1])).convert("RGB")  # portrait: padded at the right
    ours = nudenet_input(image)
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])  # as cv2.imread gives it to NudeNet
    theirs = _read_image(bgr, 320)[0][0]
    assert ours.shape == theirs.shape == (3, 320, 320)
    assert np.abs(ours - theirs).max() < 1e-6


def test_score_is_the_top_exposed_class_confidence():
    anchors = 2100
    output = np.zeros((3, 4 + len(NUDENET_CLASSES), anchors), np.float32)
    output[:, 4 + NUDENET_CLASSES.index("FACE_FEMALE"), 10] = 0.95  # covered/face classes never count
    output[:, 4 + NUDENET_CLASSES.index("FEET_EXPOSED"), 11] = 0.9  # nor everyday exposed parts
    output[1, 4 + NUDENET_CLASSES.index("FEMALE_BREAST_EXPOSED"), 500] = 0.7
    output[1, 4 + NUDENET_CLASSES.index("BUTTOCKS_EXPOSED"), 900] = 0.4
    output[2, 4 + NUDENET_CLASSES.index("MALE_GENITALIA_EXPOSED"), 2099] = 0.3
    output[:, 0:4, :] = 300.0  # box coordinates must not leak into the score
    scores = [exposed_confidence(summarise_nudenet(anchors, (320, 320), 0.2).class_top) for anchors in output]
    assert scores == pytest.approx([0.0, 0.7, 0.3])
    assert set(SEXUAL_EXPOSED_CLASSES) <= set(NUDENET_CLASSES)


@pytest.mark.parametrize(
    "action, score, expected",
    [("tag", 0.99, None), ("tag", 0.1, None), ("drop", 0.5, "nsfw"), ("drop", 0.99, "nsfw"), ("drop", 0.49, None)],
)
def test_threshold_and_action(action, score, expected):
    stage = NsfwFilter(NsfwFilter.Params(threshold=0.5, action=action))
    sample = _samples([b"unused"])[0]
    sample.fields["nsfw_score"] = score
    assert stage.keep(sample).reason == expected


def test_unreadable_images_are_dropped_without_spoiling_the_batch(stage):
    good = _benign_images()[0]
    samples = _samples([b"not an image", good, None])
    stage.score(samples)
    assert "nsfw_score" in samples[1].fields
    assert [stage.keep(s).reason for s in samples] == ["image_unreadable", None, "image_unreadable"]


# LAION-style head over CLIP embeddings ------------------------------------


def _h14_like_head(in_features: int, outputs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        torch.nn.Linear(in_features, 16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(16, 8),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(8, 4),
        torch.nn.Linear(4, outputs),
    )
    head = torch.nn.Module()
    head.layers = layers  # saved keys: layers.0.weight, ... as in LAION's h14_nsfw.pth
    return head.eval()


def _embeddings(count: int, size: int) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(count, size)).astype(np.float32)


def _head_stage(tmp_path, head, **params) -> NsfwFilter:
    path = tmp_path / "head.pth"
    torch.save(head.state_dict(), path)
    stage = NsfwFilter(NsfwFilter.Params(clip_head_path=str(path), **params))
    stage.setup()
    return stage


def _with_embeddings(embeddings: np.ndarray) -> list[Sample]:
    samples = _samples([None] * len(embeddings))  # the head needs no image
    for sample, embedding in zip(samples, embeddings):
        sample.fields["clip_image_embedding"] = embedding.tolist()
    return samples


def test_clip_head_one_output_is_a_sigmoid(tmp_path):
    head = _h14_like_head(12, 1)
    stage = _head_stage(tmp_path, head)
    embeddings = _embeddings(5, 12)
    samples = _with_embeddings(embeddings)
    stage.score(samples)
    with torch.no_grad():
        normalised = torch.nn.functional.normalize(torch.tensor(embeddings), dim=1)
        expected = torch.sigmoid(head.layers(normalised)[:, 0]).tolist()
    assert [s.fields["nsfw_score"] for s in samples] == pytest.approx(expected, abs=1e-4)


def test_clip_head_probability_output_is_clipped(tmp_path):
    head = _h14_like_head(12, 1)
    with torch.no_grad():
        head.layers[7].bias.fill_(5.0)  # a regressor overshooting 1
    stage = _head_stage(tmp_path, head, clip_head_output="probability")
    samples = _with_embeddings(_embeddings(3, 12))
    stage.score(samples)
    assert [s.fields["nsfw_score"] for s in samples] == [1.0, 1.0, 1.0]


def test_clip_head_two_outputs_is_a_softmax_and_a_single_linear_works(tmp_path):
    torch.manual_seed(1)
    linear = torch.nn.Linear(6, 2).eval()
    stage = _head_stage(tmp_path, linear, action="drop", threshold=0.5)
    embeddings = _embeddings(4, 6)
    samples = _with_embeddings(embeddings)
    stage.score(samples)
    with torch.no_grad():
        expected = torch.softmax(linear(torch.nn.functional.normalize(torch.tensor(embeddings), dim=1)), 1)[:, 1]
    assert [s.fields["nsfw_score"] for s in samples] == pytest.approx(expected.tolist(), abs=1e-4)
    verdicts = [stage.keep(s).reason for s in samples]
    assert verdicts == ["nsfw" if p >= 0.5 else None for p in expected.tolist()]


def test_clip_head_without_embedding_or_with_wrong_size(tmp_path):
    stage = _head_stage(tmp_path, _h14_like_head(12, 1))
    samples = _with_embeddings(_embeddings(2, 12))
    del samples[0].fields["clip_image_embedding"]
    stage.score(samples)
    assert stage.keep(samples[0]).reason == "missing_clip_embedding"
    assert stage.keep(samples[1]) == KEEP
    with pytest.raises(ValueError, match="12-d embeddings"):
        stage.score(_with_embeddings(_embeddings(2, 7)))


def test_clip_head_with_too_many_outputs_is_refused_before_the_run(tmp_path):
    path = tmp_path / "head.pth"
    torch.save(_h14_like_head(12, 5).state_dict(), path)
    with pytest.raises(ValueError, match="1 or 2 outputs"):
        NsfwFilter(NsfwFilter.Params(clip_head_path=str(path))).check()


def test_missing_clip_head_file_is_a_clear_error(tmp_path):
    stage = NsfwFilter(NsfwFilter.Params(clip_head_path=str(tmp_path / "nope.pth")))
    with pytest.raises(FileNotFoundError, match="NSFW CLIP head"):
        stage.check()
    with pytest.raises(FileNotFoundError, match="NSFW CLIP head"):
        stage.setup()
    NsfwFilter().check()  # the packaged detector is there
