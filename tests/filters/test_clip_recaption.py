"""recaption (CapFilt): the decoders on a fake model, the choice rule, and the stage on a tiny CoCa."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.models.openclip import ModelLoadError
from filters.recaption import (
    MIN_CAPTION_TOKENS,
    Recaption,
    beam_search,
    choose_caption,
    sample_nucleus,
)
from pipeline.core.params import ParamError, build
from pipeline.core.registry import get_stage
from tiny_openclip import image_sample

SOT, EOT, VOCAB = 0, 1, 5


def markov_logits(table: dict[int, list[float]]):
    """Next-token logits from the last token only: a fake language model with known likelihoods."""

    def next_logits(tokens, rows):
        return torch.log(torch.tensor([table[int(t[-1])] for t in tokens]))

    return next_logits


def test_beam_search_finds_the_likely_sequence_greedy_misses():
    # From the start, token 2 (0.55) beats 3 (0.45), but 2 leads on to a uniform guess while 3
    # repeats itself at 0.4 and ends at 0.6: [3, 3, 3, 3] is the most likely caption per token.
    table = {
        SOT: [0, 0, 0.55, 0.45, 0],
        2: [0, 0.25, 0.25, 0.25, 0.25],
        3: [0, 0.6, 0, 0.4, 0],
        4: [0, 0.25, 0.25, 0.25, 0.25],
    }
    best = beam_search(markov_logits(table), 1, 3, 1, SOT, EOT, max_length=12)[0][0]
    assert best == [3] * MIN_CAPTION_TOKENS
    greedy = sample_nucleus(markov_logits(table), [0], [0], 1e-6, SOT, EOT, max_length=12)[0]
    assert greedy[0] == 2  # nucleus sampling with a tiny top_p is greedy decoding


def test_beam_search_respects_min_and_max_length_and_returns_several():
    table = {t: [0, 0.9, 0.05, 0.05, 0] for t in (SOT, 2, 3)}  # the end token as soon as allowed
    found = beam_search(markov_logits(table), 2, 4, 3, SOT, EOT, max_length=10)
    assert len(found) == 2 and all(len(per_image) == 3 for per_image in found)
    assert all(len(tokens) == MIN_CAPTION_TOKENS for tokens in found[0])
    assert len({tuple(tokens) for tokens in found[0]}) == 3
    never_ends = {t: [0, 0, 0.5, 0.5, 0] for t in (SOT, 2, 3)}
    assert len(beam_search(markov_logits(never_ends), 1, 2, 1, SOT, EOT, max_length=8)[0][0]) == 7


def test_nucleus_sampling_is_seeded_per_row_and_stays_in_the_nucleus():
    table = {t: [0, 0.3, 0.4, 0.25, 0.05] for t in (SOT, 2, 3, 4)}
    first = sample_nucleus(markov_logits(table), [0, 0, 1], [7, 8, 7], 0.6, SOT, EOT, max_length=30)
    again = sample_nucleus(markov_logits(table), [1], [7], 0.6, SOT, EOT, max_length=30)
    assert first[0] == first[2] == again[0]  # same seed, same caption, whatever the batch
    assert first[0] != first[1]
    assert all(token in (2, 3) for tokens in first for token in tokens)  # 4 is outside the 0.6 nucleus


def test_choose_caption():
    assert choose_caption("orig", 0.3, ["a", "b"], [0.2, 0.4]) == choose_caption("orig", 0.3, ["b"], [0.4])
    assert choose_caption("orig", 0.3, ["a", "b"], [0.2, 0.4]).choice == "synthetic"
    assert choose_caption("orig", 0.5, ["a", "b"], [0.2, 0.4]).choice == "original"
    assert choose_caption("orig", 0.4, ["b"], [0.4]).choice == "original"  # ties keep the original
    assert choose_caption(None, None, ["a"], [-0.9]).choice == "synthetic"
    none = choose_caption("orig", None, [], [])
    assert (none.choice, none.synthetic) == ("original", None)


class StubClip:
    """CLIP stand-in: every image embeds to e0; a text's similarity to it is looked up by text."""

    def __init__(self, similarity):
        self.similarity = similarity

    def encode_images(self, images):
        return torch.eye(2)[[0] * len(images)]

    def encode_texts(self, texts):
        return torch.tensor([[s, math.sqrt(1 - s * s)] for s in map(self.similarity, texts)])


def make_stage(tiny_coca, tiny_clip, **values) -> Recaption:
    params = build(Recaption.Params, {
        "coca_model": tiny_coca.model, "coca_pretrained": tiny_coca.pretrained,
        "coca_model_config": tiny_coca.model_config, "model": tiny_clip.model,
        "pretrained": tiny_clip.pretrained, "model_config": tiny_clip.model_config,
        "max_length": 8, **values}, "recaption")
    stage = Recaption(params)
    stage.setup()
    return stage


def test_registered():
    assert get_stage("recaption") is Recaption


@pytest.mark.parametrize("generation, num_captions", [("beam_search", 1), ("top_p", 2)])
def test_tiny_coca_writes_captions_scored_by_clip(tiny_coca, tiny_clip, generation, num_captions):
    stage = make_stage(tiny_coca, tiny_clip, generation=generation, num_captions=num_captions)
    samples = [image_sample(0, "a cat"), image_sample(1, None)]
    stage.score(samples)
    for sample in samples:
        assert isinstance(sample.fields["caption_synthetic"], str) and sample.fields["caption_synthetic"].strip()
        assert -1 <= sample.fields["clip_score_synthetic"] <= 1
        assert sample.fields["caption_choice"] in ("original", "synthetic")
    assert -1 <= samples[0].fields["clip_score_original"] <= 1
    assert samples[1].fields["caption_choice"] == "synthetic"  # no original to keep
    assert samples[1].caption == samples[1].fields["caption_synthetic"]
    again = [image_sample(0, "a cat")]
    stage.score(again)
    assert again[0].fields["caption_synthetic"] == samples[0].fields["caption_synthetic"]


def test_best_synthetic_replaces_a_worse_original(tiny_coca, tiny_clip):
    stage = make_stage(tiny_coca, tiny_clip)
    stage.clip = StubClip(lambda text: 0.1 if text == "IMG_0042.jpg" else 0.3)
    sample = image_sample(0, "IMG_0042.jpg")
    stage.score([sample])
    assert sample.fields["caption_choice"] == "synthetic"
    assert sample.caption == sample.fields["caption_synthetic"] != "IMG_0042.jpg"
    assert sample.fields["caption_original"] == "IMG_0042.jpg"
    assert sample.fields["clip_score_original"] == pytest.approx(0.1)
    assert sample.fields["clip_score_synthetic"] == pytest.approx(0.3)


def test_better_original_stays_and_keep_both_never_replaces(tiny_coca, tiny_clip):
    stage = make_stage(tiny_coca, tiny_clip)
    stage.clip = StubClip(lambda text: 0.5 if text == "a tabby cat" else 0.2)
    good = image_sample(0, "a tabby cat")
    stage.score([good])
    assert (good.caption, good.fields["caption_choice"]) == ("a tabby cat", "original")

    both = make_stage(tiny_coca, tiny_clip, keep="both")
    both.clip = StubClip(lambda text: 0.1 if text == "junk" else 0.3)
    noisy = image_sample(1, "junk")
    both.score([noisy])
    assert noisy.fields["caption_choice"] == "synthetic"
    assert noisy.caption == "junk" and noisy.fields["caption_synthetic"]


def test_undecodable_image_keeps_its_caption(tiny_coca, tiny_clip):
    stage = make_stage(tiny_coca, tiny_clip)
    broken = image_sample(0, "a cat", image=b"garbage")
    stage.score([broken])
    assert broken.caption == "a cat" and broken.fields["caption_choice"] == "original"
    assert broken.fields["caption_synthetic"] is None
    assert stage.keep(broken).keep


def test_param_checks(tiny_coca, tiny_clip):
    with pytest.raises(ParamError, match="num_captions"):
        Recaption(Recaption.Params(num_captions=0))
    with pytest.raises(ParamError, match="top_p"):
        Recaption(Recaption.Params(top_p=0.0))
    with pytest.raises(ParamError, match="exceeds"):
        make_stage(tiny_coca, tiny_clip, max_length=200)
    with pytest.raises(ModelLoadError, match="not a CoCa model"):
        make_stage(tiny_clip, tiny_clip)
    with pytest.raises(ModelLoadError, match="not a CoCa model"):
        Recaption(Recaption.Params(coca_model="ViT-B-32", coca_pretrained="openai")).check()
    with pytest.raises(ParamError, match="exceeds"):
        Recaption(Recaption.Params(coca_model=tiny_coca.model, coca_pretrained=tiny_coca.pretrained,
                                   coca_model_config=tiny_coca.model_config, max_length=25)).check()
