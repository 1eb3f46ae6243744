"""Bias audit: which groups captions mention, and with which occupations and activities.

A label-only stage: it never drops a sample.  For each caption it matches the
word lists in `filters/data/bias_terms.yaml` (or `terms_path`) and writes

* `bias_terms`: the matched labels, comma-separated and sorted, e.g.
  "activity/cooking,gender/female" ("" when nothing matched).  Labels are
  CATEGORY/NAME; `groups` categories (gender, age, ethnicity_nationality) say
  who is mentioned, `contexts` categories (occupation, activity) what they
  are shown as or doing, so co-occurrences such as women and cooking can be
  counted.

With `clip_model` (and `clip_pretrained`, optionally `clip_model_config`, as
in `clip_score`) it also estimates *perceived* attributes from the image by
zero-shot CLIP: for each attribute in the file's `perceived_attributes`, the
label whose prompt the image is most similar to, written as

* `bias_perceived`: e.g. "age/adult,gender/female" ("" without an image).

These are model estimates of how people are presented, with the model's own
biases, not facts about anyone.  The report (`curate report`) compares kept
and rejected samples; put this stage before the filters whose effect you
want to measure (e.g. before `clip_score`), so rows they drop carry the labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


from pipeline.core.stage import Mapper, Needs, StageContext
from pipeline.core.registry import register
from pipeline.core.records import Sample
from pipeline.media.bias_terms import PERCEIVED_FIELD, TERMS_FIELD, BiasTerms, join_labels, load_terms

@register
class BiasAudit(Mapper):
    """Label-only: group terms in captions and their co-occurrence with occupations and activities."""

    name = "bias_audit"

    @dataclass(frozen=True)
    class Params:
        terms_path: str | None = None  # default: filters/data/bias_terms.yaml
        clip_model: str | None = None  # e.g. ViT-B-32-quickgelu: enables perceived-attribute estimates
        clip_pretrained: str | None = None  # pretrained tag or checkpoint path
        clip_model_config: str | None = None  # open_clip config JSON, for an architecture open_clip does not list
        device: str = "cpu"
        batch_size: int = 32

    def __init__(self, params: Any = None):
        super().__init__(params)

    def needs(self) -> Needs:
        # Perceived-attribute estimates need the image and a CLIP model; term matching needs neither.
        with_clip = bool(self.params.clip_model)
        return Needs(image=with_clip, model=with_clip)

    def check(self) -> list[str]:
        """Fail before the run on a broken word list or missing CLIP weights."""
        load_terms(self.params.terms_path)
        if not self.params.clip_model:
            return []
        from pipeline.models.openclip import check_weights

        p = self.params
        if not p.clip_pretrained:
            raise ValueError("clip_model is set but clip_pretrained is not: give a pretrained tag or checkpoint path")
        return [check_weights(p.clip_model, p.clip_pretrained, p.clip_model_config, p.device)]

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        self.terms = load_terms(self.params.terms_path)
        self.perceived = PerceivedAttributes(self.terms, self.params) if self.params.clip_model else None

    def score(self, batch: list[Sample]) -> None:
        for sample in batch:
            sample.fields[TERMS_FIELD] = join_labels(self.terms.labels(sample.caption))
        if self.perceived is not None:
            for sample, labels in zip(batch, self.perceived.labels([s.image for s in batch])):
                sample.fields[PERCEIVED_FIELD] = join_labels(labels)

    def score_one(self, sample: Sample) -> None:
        self.score([sample])


class PerceivedAttributes:
    """Zero-shot CLIP: for each attribute, the prompt most similar to the image."""

    def __init__(self, terms: BiasTerms, params: Any):
        from pipeline.models.openclip import ModelSource, encoder_for

        source = ModelSource(params.clip_model, params.clip_pretrained, params.clip_model_config, params.device)
        self.encoder = encoder_for(source)
        self.attributes = [
            (attribute, list(prompts), self.encoder.encode_texts(list(prompts.values())))
            for attribute, prompts in terms.perceived_prompts.items()
        ]

    def labels(self, images: list[bytes | None]) -> list[list[str]]:
        from pipeline.models.openclip import open_image

        decoded = [open_image(data) for data in images]
        present = [i for i, image in enumerate(decoded) if image is not None]
        embeddings = dict(zip(present, self.encoder.encode_images([decoded[i] for i in present])))
        result = []
        for i in range(len(images)):
            embedding = embeddings.get(i)
            if embedding is None:
                result.append([])
                continue
            result.append(sorted(
                f"{attribute}/{names[int((prompt_embeddings @ embedding).argmax())]}"
                for attribute, names, prompt_embeddings in self.attributes
            ))
        return result
