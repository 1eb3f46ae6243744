"""The bias audit's word lists and labels: groups, contexts and perceived-attribute prompts.

Read by the `bias_audit` stage (filters/bias_audit.py), which writes the
labels, and by the report (pipeline/tools/), which counts them.  The default
list is `filters/data/bias_terms.yaml`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

TERMS_FIELD = "bias_terms"
PERCEIVED_FIELD = "bias_perceived"
SECTIONS = ("groups", "contexts")
_WORD = re.compile(r"[^\W_]+")
# libyaml's safe loader when PyYAML was built with it: the bundled list parses in ~10 ms instead of 170
# (every run's report reads it).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
    # first word -> the lengths (in words) of the phrases starting with it: most of a caption's words
    # start no phrase, and are passed over with one lookup (the report labels every row's caption).
    lengths_by_first_word: dict[str, tuple[int, ...]]

    def labels(self, caption: str | None) -> list[str]:
        """Sorted labels whose terms occur in `caption`."""
        words = _words(caption or "")
        found: set[str] = set()
        for start, word in enumerate(words):
            for length in self.lengths_by_first_word.get(word, ()):
                if start + length <= len(words):
                    found.update(self.phrases.get(tuple(words[start:start + length]), ()))
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
        document = yaml.load(Path(path).expanduser().read_text(encoding="utf-8"), Loader=_YAML_LOADER)
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
        lengths_by_first_word=_lengths_by_first_word(phrases),
    )


def _lengths_by_first_word(phrases: dict[tuple[str, ...], Any]) -> dict[str, tuple[int, ...]]:
    lengths: dict[str, set[int]] = {}
    for words in phrases:
        lengths.setdefault(words[0], set()).add(len(words))
    return {word: tuple(sorted(found)) for word, found in lengths.items()}


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
