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

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.stage import Mapper, Needs, StageContext
from pipeline.core.registry import register
from pipeline.core.records import Sample

TERMS_FIELD = "bias_terms"
PERCEIVED_FIELD = "bias_perceived"
SECTIONS = ("groups", "contexts")
_WORD = re.compile(r"[^\W_]+")


class TermsError(ValueError):
    """The word-list file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class BiasTerms:
    """Word lists compiled for matching."""

    phrases: dict[tuple[str, ...], frozenset[str]]  # word tuple -> labels
    group_categories: tuple[str, ...]
    context_categories: tuple[str, ...]
    perceived_prompts: dict[str, dict[str, str]]  # attribute -> {label name: prompt}
    source: str
    longest_phrase: int  # words

    def labels(self, caption: str | None) -> list[str]:
        """Sorted labels whose terms occur in `caption`."""
        words = _words(caption or "")
        found: set[str] = set()
        for start in range(len(words)):
            for end in range(start + 1, min(start + self.longest_phrase, len(words)) + 1):
                found.update(self.phrases.get(tuple(words[start:end]), ()))
        return sorted(found)

    def is_group(self, label: str) -> bool:
        return category_of(label) in self.group_categories


def category_of(label: str) -> str:
    return label.partition("/")[0]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def default_terms_path() -> str:
    return str(resources.files("filters") / "data" / "bias_terms.yaml")


def load_terms(path: str | None = None) -> BiasTerms:
    """Read and check a word-list file (the bundled one by default)."""
    path = path or default_terms_path()
    try:
        document = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as err:
        raise TermsError(f"bias terms file {path!r}: cannot read it: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise TermsError(f"bias terms file {path!r}: not valid YAML: {err}") from None
    if not isinstance(document, dict):
        raise TermsError(f"bias terms file {path!r}: expected a mapping with 'groups' and 'contexts'")
    phrases: dict[tuple[str, ...], set[str]] = {}
    categories: dict[str, tuple[str, ...]] = {}
    for section in SECTIONS:
        categories[section] = _add_section(document.get(section), f"{path}: {section}", phrases)
    clash = set(categories["groups"]) & set(categories["contexts"])
    if clash:
        raise TermsError(f"bias terms file {path!r}: categories {sorted(clash)} are both groups and contexts")
    return BiasTerms(
        phrases={words: frozenset(labels) for words, labels in phrases.items()},
        group_categories=categories["groups"],
        context_categories=categories["contexts"],
        perceived_prompts=_perceived_prompts(document.get("perceived_attributes") or {}, path),
        source=str(path),
        longest_phrase=max(len(words) for words in phrases),
    )


def _add_section(section: Any, where: str, phrases: dict[tuple[str, ...], set[str]]) -> tuple[str, ...]:
    """Adds a section's terms to `phrases`; returns its category names."""
    if not isinstance(section, dict) or not section:
        raise TermsError(f"{where}: expected a mapping CATEGORY -> NAME -> [terms]")
    for category, names in section.items():
        if not isinstance(names, dict):
            raise TermsError(f"{where}.{category}: expected a mapping NAME -> [terms]")
        for name, terms in names.items():
            if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
                raise TermsError(f"{where}.{category}.{name}: expected a list of words or phrases")
            for term in terms:
                words = tuple(_words(term))
                if words:
                    phrases.setdefault(words, set()).add(f"{category}/{name}")
    return tuple(section)


def _perceived_prompts(section: Any, path: str) -> dict[str, dict[str, str]]:
    if not isinstance(section, dict) or not all(
        isinstance(prompts, dict) and len(prompts) >= 2 and all(isinstance(p, str) for p in prompts.values())
        for prompts in section.values()
    ):
        raise TermsError(f"bias terms file {path!r}: perceived_attributes must map ATTRIBUTE -> "
                         "{NAME: prompt} with at least two prompts each")
    return {attribute: dict(prompts) for attribute, prompts in section.items()}


def join_labels(labels: list[str]) -> str:
    return ",".join(labels)


def split_labels(value: Any) -> list[str]:
    """Labels from a stored field value ("a/b,c/d"); [] for None or ""."""
    return [label for label in str(value).split(",") if label] if value else []


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
