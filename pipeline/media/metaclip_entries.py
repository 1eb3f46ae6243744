"""MetaCLIP metadata entries and the substring matching of captions against them.

Matching follows MetaCLIP's curation code (Xu et al. 2023, and MetaCLIP 2's
`curation/substr_matching.py`): a caption matches an entry when the entry
occurs in it as a whole-word substring.  Whole words come from padding: the
caption is wrapped in spaces, the punctuation `, . ; : ? ! `` is wrapped in
spaces and tabs and line breaks become spaces; an entry is padded with a
space on each side, except on a side whose character is CJK, Thai, Lao,
Burmese, Khmer, Tibetan or punctuation (scripts written without spaces).
One Aho-Corasick automaton (`pyahocorasick`) finds every entry in one pass
over the caption.  Matching is case-sensitive, as in MetaCLIP; `lowercase`
lower-cases captions first (useful with an all-lower-case entry list).

Entry files: a JSON list of strings (MetaCLIP's released `metadata.json`),
or plain text with one entry per line (blank lines and lines starting with
`#` are skipped).  Duplicates count once.
"""
from __future__ import annotations

import functools
import json
import string
from importlib import resources
from pathlib import Path

import ahocorasick

_PUNCTUATION_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")
_SPACE_LIKE = ("\t", "\n", "\r")
_WIDE_PUNCTUATION = frozenset("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")
# Scripts written without spaces between words: an entry is not padded on a side
# that ends in one of these (MetaCLIP 2's is_cjk_or_similar).
_UNSPACED_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF),
    (0x2FF0, 0x2FFF),
    (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x0F00, 0x0FFF),
)


class EntriesError(ValueError):
    pass


def default_entries_path() -> str:
    return str(resources.files("filters") / "data" / "balance_entries.txt")


def load_entries(path: str | None = None) -> list[str]:
    """The entries of a JSON list or a one-per-line text file, in file order, without duplicates."""
    path = path or default_entries_path()
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as err:
        raise EntriesError(f"metadata entries file {path!r}: cannot read it: {err.strerror}") from None
    if text.lstrip().startswith("["):
        entries = _json_entries(text, path)
    else:
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    entries = list(dict.fromkeys(entries))
    if not entries:
        raise EntriesError(f"metadata entries file {path!r}: no entries")
    return entries


def _json_entries(text: str, path: str) -> list[str]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise EntriesError(f"metadata entries file {path!r}: not valid JSON: {err}") from None
    if not all(isinstance(entry, str) for entry in document):
        raise EntriesError(f"metadata entries file {path!r}: expected a JSON list of strings")
    return [entry.strip() for entry in document if entry.strip()]


_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _is_unspaced(char: str) -> bool:
    if char.isascii():  # the common case, without the range scan
        return char in _ASCII_PUNCTUATION
    code = ord(char)
    if any(low <= code <= high for low, high in _UNSPACED_RANGES):
        return True
    return char in _WIDE_PUNCTUATION


def spaced_entry(entry: str) -> str:
    """The entry as the automaton looks for it: padded on each side that is not CJK-like."""
    left = "" if _is_unspaced(entry[0]) else " "
    right = "" if _is_unspaced(entry[-1]) else " "
    return f"{left}{entry}{right}"


def spaced_text(text: str) -> str:
    """The caption as the automaton scans it: space-wrapped, punctuation split off."""
    spaced = f" {text} "
    for mark in _PUNCTUATION_TO_WRAP:
        spaced = spaced.replace(mark, f" {mark} ")
    for char in _SPACE_LIKE:
        spaced = spaced.replace(char, " ")
    return spaced


class EntryMatcher:
    """Finds which entries a caption contains (see the module doc)."""

    def __init__(self, entries: list[str], lowercase: bool = False):
        self.lowercase = lowercase
        self._automaton = ahocorasick.Automaton()
        for entry in entries:
            self._automaton.add_word(spaced_entry(entry), entry)
        self._automaton.make_automaton()

    def match(self, caption: str | None) -> list[str]:
        """The entries found in `caption`, sorted and without repeats."""
        if not caption:
            return []
        text = caption.lower() if self.lowercase else caption
        return sorted({entry for _end, entry in self._automaton.iter(spaced_text(text))})


@functools.lru_cache(maxsize=4)
def shared_matcher(entries_path: str | None, lowercase: bool) -> EntryMatcher:
    """One matcher per process and entry file: building one for 500k entries takes seconds,
    and a worker process may hold several instances of a stage's DoFn."""
    return EntryMatcher(load_entries(entries_path), lowercase)
