"""Synthetic captions with CoCa, filtered by CLIP: CapFilt.

Web alt-texts are often noise ("IMG_0042.jpg", "click here").  BLIP's CapFilt
(Li et al., 2022) bootstraps a cleaner dataset with two models: a *captioner*
writes a synthetic caption for every web image, and a *filter* judges how well
each caption, original and synthetic, matches its image; the noisy ones go.
LAION-COCO (BLIP captions re-ranked by CLIP) and Nguyen et al. (2023, synthetic
captions mixed with raw ones, filtered by CLIP score) did the same with open models.

Here the captioner is an open_clip CoCa model and the filter is a CLIP model
(the same `model`/`pretrained`/`model_config` as `clip_score`).  For every
image the stage generates `num_captions` captions (beam search or nucleus
sampling), scores the original and the synthetic ones with CLIP, and records:

* `caption_original`, `caption_synthetic` (the best-scoring synthetic one),
* `clip_score_original`, `clip_score_synthetic`,
* `caption_choice`: "synthetic" when the synthetic caption scores higher than
  the original (or there is no original), else "original" (ties keep the
  original).

With `keep: best` the sample's caption becomes the chosen one; with
`keep: both` the original caption stays and the synthetic one travels in its
field, for training on both.  The stage filters nothing: a later `clip_score`
stage thresholds the result.  An image that does not decode keeps its caption
(`caption_choice: original`, no synthetic caption).

Generation is implemented here on top of CoCa's forward pass, because
open_clip's `CoCa.generate` needs the `transformers` package.  Beam search
returns the highest-likelihood captions (length-normalised log-probability);
nucleus sampling is seeded from each sample's key, so a re-run and any batching
give the same captions.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pipeline.core.stage import Mapper, Needs, StageContext
from pipeline.models.openclip import (
    ClipEncoder,
    ModelLoadError,
    ModelSource,
    caption_text,
    encoder_for,
    load_model,
    open_image,
)
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import KEEP, Sample, Verdict

BEAMS = 6  # open_clip's default for CoCa
DEFAULT_CONTEXT_LENGTH = 77  # open_clip's, for configs that do not set one
MIN_CAPTION_TOKENS = 4  # end-of-text is forbidden before this many words/pieces

# (tokens so far [n, t], image index of each row [n]) -> next-token logits [n, vocab]
NextLogits = Callable[[Any, Any], Any]


@register
class Recaption(Mapper):
    name = "recaption"
    NEEDS = Needs(model=True)

    @dataclass(frozen=True)
    class Params:
        coca_model: str = "coca_ViT-L-14"  # open_clip CoCa model that writes the captions
        coca_pretrained: str = "mscoco_finetuned_laion2b_s13b_b90k"  # its pretrained tag or checkpoint path
        coca_model_config: str | None = None  # its open_clip config JSON, if open_clip does not list it
        num_captions: int = 1  # synthetic captions per image; CLIP picks the best
        generation: Literal["beam_search", "top_p"] = "beam_search"  # decoding: beam search or nucleus sampling
        top_p: float = 0.9  # nucleus: sample among the most likely tokens holding this much probability
        max_length: int = 30  # tokens, counting the start and end tokens, as open_clip's seq_len
        keep: Literal["best", "both"] = "best"  # caption becomes the better one, or both are kept
        model: str = "ViT-B-32-quickgelu"
        pretrained: str = "openai"
        model_config: str | None = None
        pretrained_tag: str | None = None  # the open_clip tag a checkpoint file holds ("openai")
        batch_size: int = 8
        device: str = "cpu"

    def __init__(self, params: Any = None):
        super().__init__(params)
        p = self.params
        if p.num_captions < 1:
            raise ParamError(f"{self.name}.num_captions: must be at least 1, got {p.num_captions}")
        if not 0.0 < p.top_p <= 1.0:
            raise ParamError(f"{self.name}.top_p: {p.top_p} is not in (0, 1]")
        if p.max_length < MIN_CAPTION_TOKENS + 2:
            raise ParamError(f"{self.name}.max_length: must be at least {MIN_CAPTION_TOKENS + 2}")

    def coca_source(self) -> ModelSource:
        return ModelSource.of(self.params, prefix="coca_")

    def clip_source(self) -> ModelSource:
        return ModelSource.of(self.params)

    def check(self) -> None:
        self.coca_source().check()
        self.clip_source().check()
        check_captioner_config(self.params.coca_model, self.params.max_length)

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        self.captioner = CocaCaptioner(self.coca_source(), self.params.max_length)
        self.clip: ClipEncoder = encoder_for(self.clip_source())

    def score(self, batch: list[Sample]) -> None:
        images = [open_image(sample.image) for sample in batch]
        with_image = [i for i, image in enumerate(images) if image is not None]
        generated = self.generate([images[i] for i in with_image], [batch[i].key for i in with_image])
        synthetic = {i: [text for text in texts if text] for i, texts in zip(with_image, generated)}
        image_embeddings = dict(zip(with_image, self.clip.encode_images([images[i] for i in with_image])))
        # Original and synthetic captions of the whole batch go through the text tower at once.
        texts = {i: _originals(batch[i]) + synthetic[i] for i in with_image}
        text_embeddings = iter(self.clip.encode_texts([text for i in with_image for text in texts[i]]))
        for i, sample in enumerate(batch):
            original = caption_text(sample)
            if i not in image_embeddings:
                self._record(sample, choose_caption(original, None, [], []))
                continue
            scores = [float(next(text_embeddings) @ image_embeddings[i]) for _ in texts[i]]
            original_score = scores.pop(0) if original else None
            self._record(sample, choose_caption(original, original_score, synthetic[i], scores))

    def generate(self, images: list, keys: list[str]) -> list[list[str]]:
        p = self.params
        if not images:
            return []
        if p.generation == "beam_search":
            return self.captioner.beam_search(images, p.num_captions)
        return self.captioner.sample_top_p(images, p.num_captions, p.top_p, [key_seed(k) for k in keys])

    def _record(self, sample: Sample, choice: "CaptionChoice") -> None:
        original = sample.caption
        sample.fields.update(
            caption_original=original,
            caption_synthetic=choice.synthetic,
            clip_score_original=choice.original_score,
            clip_score_synthetic=choice.synthetic_score,
            caption_choice=choice.choice,
        )
        if self.params.keep == "best" and choice.choice == "synthetic":
            sample.caption = choice.synthetic

    def keep(self, sample: Sample) -> Verdict:
        return KEEP


def _originals(sample: Sample) -> list[str]:
    original = caption_text(sample)
    return [original] if original else []


@dataclass(frozen=True)
class CaptionChoice:
    choice: Literal["original", "synthetic"]
    synthetic: str | None
    original_score: float | None
    synthetic_score: float | None


def choose_caption(
    original: str | None,
    original_score: float | None,
    synthetic: list[str],
    synthetic_scores: list[float],
) -> CaptionChoice:
    """The best synthetic caption, and whether it beats the original (ties keep the original)."""
    if not synthetic:
        return CaptionChoice("original", None, original_score, None)
    best = max(range(len(synthetic)), key=lambda i: (synthetic_scores[i], -i))
    best_score = synthetic_scores[best]
    wins = original is None or original_score is None or best_score > original_score
    return CaptionChoice("synthetic" if wins else "original", synthetic[best], original_score, best_score)


def key_seed(key: str) -> int:
    """A sampling seed from the sample key: stable across runs, processes and batchings."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**63 - 1)


def check_captioner_config(coca_model: str, max_length: int) -> None:
    """A captioner needs CoCa's text decoder, and room in its context for `max_length` tokens."""
    import open_clip

    config = open_clip.get_model_config(coca_model) or {}
    if "multimodal_cfg" not in config:
        raise ModelLoadError(f"recaption.coca_model: {coca_model!r} is not a CoCa model (no multimodal_cfg)")
    context_length = config["multimodal_cfg"].get("context_length", DEFAULT_CONTEXT_LENGTH)
    if max_length > context_length:
        raise ParamError(f"recaption.max_length: {max_length} exceeds {coca_model}'s context length {context_length}")


class CocaCaptioner:
    """Captions from an open_clip CoCa model, decoded by beam search or nucleus sampling."""

    def __init__(self, source: ModelSource, max_length: int):
        loaded = load_model(source)  # checks the weights and registers a model_config first
        check_captioner_config(source.model, max_length)
        tokenizer = loaded.tokenizer
        if not all(hasattr(tokenizer, name) for name in ("sot_token_id", "eot_token_id", "decode")):
            raise ModelLoadError(f"recaption: {source.describe()} has a tokenizer without start/end token ids")
        self.loaded = loaded
        self.device = source.device
        self.max_length = max_length

    def beam_search(self, images: list, num_captions: int) -> list[list[str]]:
        next_logits = self._next_logits(images)
        tokenizer = self.loaded.tokenizer
        found = beam_search(next_logits, len(images), max(BEAMS, num_captions), num_captions,
                            tokenizer.sot_token_id, tokenizer.eot_token_id, self.max_length)
        return [[self._text(tokens) for tokens in per_image] for per_image in found]

    def sample_top_p(self, images: list, num_captions: int, top_p: float, seeds: list[int]) -> list[list[str]]:
        next_logits = self._next_logits(images)
        tokenizer = self.loaded.tokenizer
        rows = [(image, n) for image in range(len(images)) for n in range(num_captions)]
        sampled = sample_nucleus(next_logits, [image for image, _ in rows],
                                 [seeds[image] + n for image, n in rows], top_p,
                                 tokenizer.sot_token_id, tokenizer.eot_token_id, self.max_length)
        texts = [self._text(tokens) for tokens in sampled]
        return [texts[i * num_captions:(i + 1) * num_captions] for i in range(len(images))]

    def _next_logits(self, images: list) -> NextLogits:
        import torch

        model = self.loaded.model
        pixels = torch.stack([self.loaded.preprocess(image) for image in images]).to(self.device)
        # no_grad, not inference_mode: the decoders edit the logits in place.
        with torch.no_grad():
            encoded = model(pixels)
        image_latent, image_embs = encoded["image_features"], encoded["image_embs"]

        def next_logits(tokens, rows):
            with torch.no_grad():
                rows = rows.to(self.device)
                out = model(None, tokens.to(self.device), image_latent=image_latent[rows],
                            image_embs=image_embs[rows], output_labels=False)
            return out["logits"][:, -1].float().cpu()

        return next_logits

    def _text(self, tokens: list[int]) -> str:
        return self.loaded.tokenizer.decode(tokens).strip()


def beam_search(
    next_logits: NextLogits,
    num_images: int,
    num_beams: int,
    num_return: int,
    sot: int,
    eot: int,
    max_length: int,
) -> list[list[list[int]]]:
    """For each image, the `num_return` most likely token sequences (without start/end tokens).

    A hypothesis is scored by its summed log-probability divided by its length;
    it ends at `eot` (allowed after MIN_CAPTION_TOKENS) or at `max_length`.
    """
    import torch

    live = [[([sot], 0.0)] for _ in range(num_images)]  # per image: (tokens, summed log-prob)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(num_images)]
    for length in range(1, max_length):
        active = [i for i in range(num_images) if live[i]]
        if not active:
            break
        beams = [(i, beam) for i in active for beam in live[i]]
        tokens = torch.tensor([beam[0] for _, beam in beams], dtype=torch.long)
        rows = torch.tensor([i for i, _ in beams], dtype=torch.long)
        log_probs = torch.log_softmax(next_logits(tokens, rows), dim=-1)
        if length <= MIN_CAPTION_TOKENS:
            log_probs[:, eot] = -math.inf
        last_step = length == max_length - 1
        start = 0
        for i in active:
            count = len(live[i])
            live[i] = _extend_beams(live[i], log_probs[start:start + count], finished[i],
                                    num_beams, eot, last_step)
            start += count
            if _beams_done(live[i], finished[i], num_return, length):
                live[i] = []
    return [[tokens for _, tokens in sorted(done, key=lambda f: -f[0])[:num_return]] for done in finished]


def _extend_beams(beams, log_probs, finished, num_beams: int, eot: int, last_step: bool):
    """The next live beams of one image; hypotheses that end are moved to `finished`."""
    import torch

    vocab = log_probs.shape[1]
    totals = torch.tensor([score for _, score in beams]).unsqueeze(1) + log_probs
    top = torch.topk(totals.flatten(), min(2 * num_beams, totals.numel()))
    extended = []
    for total, index in zip(top.values.tolist(), top.indices.tolist()):
        if total == -math.inf:
            break
        tokens, token = beams[index // vocab][0], index % vocab
        if token == eot or last_step:
            # Normalised by the generated tokens, the end token included.
            finished.append((total / len(tokens), tokens[1:] if token == eot else tokens[1:] + [token]))
        elif len(extended) < num_beams:
            extended.append((tokens + [token], total))
    return extended


def _beams_done(live, finished, num_return: int, length: int) -> bool:
    """Done once enough hypotheses ended and no live beam can still beat the worst of them
    (the usual heuristic: a live beam's score only falls as it grows)."""
    if not live:
        return True
    if len(finished) < num_return:
        return False
    kept = sorted((score for score, _ in finished), reverse=True)[:num_return]
    best_live = max(score for _, score in live) / length
    return kept[-1] >= best_live


def sample_nucleus(
    next_logits: NextLogits,
    rows: list[int],
    seeds: list[int],
    top_p: float,
    sot: int,
    eot: int,
    max_length: int,
) -> list[list[int]]:
    """One sampled token sequence (without start/end tokens) per row, from the smallest set of
    tokens whose probability reaches `top_p`; each row has its own seeded generator."""
    import torch

    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    sequences = [[sot] for _ in rows]
    open_rows = list(range(len(rows)))
    for length in range(1, max_length):
        if not open_rows:
            break
        tokens = torch.tensor([sequences[r] for r in open_rows], dtype=torch.long)
        logits = next_logits(tokens, torch.tensor([rows[r] for r in open_rows], dtype=torch.long))
        if length <= MIN_CAPTION_TOKENS:
            logits[:, eot] = -math.inf
        probs = _nucleus(torch.softmax(logits, dim=-1), top_p)
        still_open = []
        for r, row_probs in zip(open_rows, probs):
            token = eot if length == max_length - 1 else int(torch.multinomial(row_probs, 1, generator=generators[r]))
            sequences[r].append(token)
            if token != eot:
                still_open.append(r)
        open_rows = still_open
    return [[t for t in sequence[1:] if t != eot] for sequence in sequences]


def _nucleus(probs, top_p: float):
    """Zero all but the most probable tokens whose cumulative probability first reaches top_p."""
    import torch

    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the more probable tokens
    sorted_probs[before >= top_p] = 0.0
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)
