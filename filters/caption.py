"""Caption sanity: drop pairs whose caption cannot describe the image.

Runs before the download (it needs only the caption), so rejected rows are
never fetched.  Rules follow what LAION and DataComp applied: a length window,
a minimum word count, and alt texts that are really file names or placeholders.

By default lengths are counted on the caption with whitespace runs collapsed,
and words in unspaced scripts (Chinese, Japanese, Thai, ...) count as about
two characters each.  DataComp's basic filter counts `len(text)` and
`len(text.split())` on the caption as given: `collapse_whitespace: false`
and `unspaced_scripts: false` do the same (manifests/datacomp-*.yaml).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.core.stage import Filter, Needs
from pipeline.core.registry import register
from pipeline.core.records import KEEP, Sample, Verdict, drop

# "IMG_1234.JPG", "DSC00042", "photo.png", "image-3", "Screenshot 2023-01-01 at 10.00.00"
_FILE_NAME = re.compile(
    r"^\s*(?:[\w\-. ]+\.(?:jpe?g|png|gif|webp|bmp|tiff?|heic|svg)"
    r"|(?:img|dsc|dscn|dcim|pxl|image|photo|pic|screenshot)[\s_\-]*[\d_\-. :at]*)\s*$",
    re.IGNORECASE,
)
_PLACEHOLDERS = frozenset(
    """image img picture photo thumbnail thumb untitled placeholder logo icon banner
    spacer pixel blank null none undefined default click here loading alt""".split()
)


@register
class CaptionFilter(Filter):
    name = "caption"
    NEEDS = Needs(image=False)

    @dataclass(frozen=True)
    class Params:
        min_chars: int = 5  # shorter captions are dropped as caption_too_short
        max_chars: int | None = 1000  # longer captions are dropped as caption_too_long; null: no limit
        min_words: int = 2  # fewer words: caption_too_few_words
        drop_file_names: bool = True  # drop alt texts that are file names (IMG_1234.JPG, photo.png)
        drop_placeholders: bool = True  # drop alt texts such as image, thumbnail, untitled, click here
        collapse_whitespace: bool = True  # count characters after collapsing whitespace runs and trimming
        unspaced_scripts: bool = True  # about two characters make a word in unspaced scripts (Chinese, Japanese, Thai)

    def keep(self, sample: Sample) -> Verdict:
        caption = " ".join((sample.caption or "").split())
        if not caption:
            return drop("empty_caption")
        length = len(caption) if self.params.collapse_whitespace else len(sample.caption)
        if length < self.params.min_chars:
            return drop("caption_too_short")
        if self.params.max_chars is not None and length > self.params.max_chars:
            return drop("caption_too_long")
        if self.params.drop_file_names and _FILE_NAME.match(caption):
            return drop("caption_is_file_name")
        if self.params.drop_placeholders and caption.lower().strip(" .!:-_") in _PLACEHOLDERS:
            return drop("caption_is_placeholder")
        words = count_words(caption) if self.params.unspaced_scripts else len(caption.split())
        if words < self.params.min_words:
            return drop("caption_too_few_words")
        return KEEP


# Scripts written without spaces between words (Han, kana, Hangul syllables, Thai, Lao, Khmer, Myanmar).
_UNSPACED = re.compile(r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def count_words(text: str) -> int:
    """Whitespace-separated words; in unspaced scripts, about two characters make a word."""
    words = 0
    for token in text.split():
        unspaced = len(_UNSPACED.findall(token))
        words += max(1, unspaced // 2) if unspaced else 1
    return words
