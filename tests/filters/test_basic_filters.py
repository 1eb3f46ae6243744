import pytest

from filters.caption import CaptionFilter
from filters.resolution import ResolutionFilter
from pipeline.core.records import Sample


def sample(caption=None, size=None):
    s = Sample(key="000000000", shard_id=0, url="http://x/a.jpg", caption=caption)
    if size:
        s.original_width, s.original_height = size
    return s


@pytest.mark.parametrize(
    "caption, reason",
    [
        (None, "empty_caption"),
        ("   \n ", "empty_caption"),
        ("dog", "caption_too_short"),
        ("x" * 1001, "caption_too_long"),
        ("IMG_2041.JPG", "caption_is_file_name"),
        ("DSC00042", "caption_is_file_name"),
        ("holiday photo.png", "caption_is_file_name"),
        ("Untitled", "caption_is_placeholder"),
        ("thumbnail", "caption_is_placeholder"),
        ("Sonnenuntergang", "caption_too_few_words"),
        ("A red bicycle leaning on a brick wall", None),
        ("Sonnenuntergang über dem Hamburger Hafen", None),
        ("東京タワーの夜景 ライトアップ", None),
        ("夕阳下的长城", None),  # no spaces, but three or so words
        ("Закат над морем", None),
    ],
)
def test_caption_reasons(caption, reason):
    verdict = CaptionFilter().keep(sample(caption))
    assert verdict.reason == reason
    assert verdict.keep is (reason is None)


def test_caption_params_change_the_decision():
    strict = CaptionFilter(CaptionFilter.Params(min_words=5))
    assert strict.keep(sample("A red bicycle")).reason == "caption_too_few_words"
    lenient = CaptionFilter(CaptionFilter.Params(drop_file_names=False, min_words=1))
    assert lenient.keep(sample("IMG_2041.JPG")).keep


@pytest.mark.parametrize(
    "size, reason",
    [
        ((100, 100), None),
        ((63, 500), "too_small"),
        ((5000, 300), "too_large"),
        ((700, 100), "bad_aspect_ratio"),
        ((0, 0), "unknown_size"),
    ],
)
def test_resolution_reasons(size, reason):
    stage = ResolutionFilter(ResolutionFilter.Params(min_side=64, max_side=4000, max_aspect_ratio=3.0))
    assert stage.keep(sample(size=size)).reason == reason


@pytest.mark.parametrize(
    "text, words",
    [("a red bicycle", 3), ("夕阳下的长城", 3), ("夕阳", 1), ("東京タワー の夜景", 3), ("Закат над морем", 3), ("", 0)],
)
def test_word_count_handles_unspaced_scripts(text, words):
    from filters.caption import count_words

    assert count_words(text) == words


@pytest.mark.parametrize(
    "caption, default_reason, datacomp_reason",
    [
        ("a b  c", "caption_too_short", None),  # 6 characters as written, 5 collapsed
        ("夕阳下的长城 photo", None, "caption_too_few_words"),  # 2 whitespace-separated words
        ("x" * 1001 + " a b", "caption_too_long", None),
    ],
)
def test_datacomp_counting(caption, default_reason, datacomp_reason):
    counting = dict(min_chars=6, min_words=3, drop_file_names=False, drop_placeholders=False)
    default = CaptionFilter(CaptionFilter.Params(**counting))
    datacomp = CaptionFilter(CaptionFilter.Params(**counting, max_chars=None, collapse_whitespace=False,
                                                  unspaced_scripts=False))
    assert default.keep(sample(caption)).reason == default_reason
    assert datacomp.keep(sample(caption)).reason == datacomp_reason
