"""dedup_caption: shingles, MinHash banding, and the Beam stage with and without image matching."""
import numpy as np
import pytest
from test_dedup_image import jpeg, losers, picture, run_stage, sample, stored

from filters.dedup_caption import CaptionDedup, lsh_bands, minhash_signature, shingles
from pipeline.core.params import ParamError
from pipeline.core.stage import Needs


def caption_sample(key, caption, image=None, **fields):
    s = sample(key, image, **fields)
    s.caption = caption
    return s


def estimated_jaccard(a, b, num_perm=128):
    sig_a, sig_b = (np.frombuffer(minhash_signature(shingles(t, "char", 5), num_perm), np.uint32) for t in (a, b))
    return float((sig_a == sig_b).mean())


def test_shingles():
    assert shingles("The  Red  CAT sat", "word", 2) == {"the red", "red cat", "cat sat"}
    assert shingles("Red cat", "word", 3) == {"red cat"}  # shorter than n: one shingle
    assert shingles("abcd", "char", 3) == {"abc", "bcd"}
    assert shingles(" !? ", "char", 3) == set() and shingles("", "word", 1) == set()


def test_signatures_are_deterministic_and_estimate_jaccard():
    assert minhash_signature({"a b", "b c"}, 64) == minhash_signature({"b c", "a b"}, 64)
    assert len(minhash_signature({"x"}, 64)) == 64 * 4
    near = estimated_jaccard("A red bicycle leaning on a brick wall in Amsterdam",
                             "a red bicycle leaning on a brick wall in amsterdam!")
    far = estimated_jaccard("A red bicycle leaning on a brick wall in Amsterdam",
                            "A blue car parked on a street in Berlin at night")
    assert near > 0.9 and far < 0.1


def test_bands_come_from_datasketch_and_cover_at_most_num_perm():
    bands, rows = lsh_bands(0.8, 128)
    assert (bands, rows) == (9, 13)
    assert bands * rows <= 128
    assert lsh_bands(0.5, 128)[1] < rows  # a lower threshold needs shorter (easier to match) bands


CAPTIONS = {
    "000000003": "A red bicycle leaning on a brick wall in Amsterdam",
    "000020000": "a red bicycle leaning on a brick wall in amsterdam!",  # same after normalising
    "000010001": "A red bicycle leaning on a brick wall in Amsterdam.",
    "000030000": "Buy cheap running shoes in size 9 with free shipping today only",
    "000010000": "Buy cheap running shoes in size 9 with free shipping today only!!",
    "000000000": "A blue car parked on a street in Berlin at night",
    "000020001": "",
    "000030001": None,
}


def test_caption_near_duplicates_are_removed_across_shards(tmp_path):
    samples = [caption_sample(key, caption) for key, caption in CAPTIONS.items()]
    result = run_stage(CaptionDedup(), samples, tmp_path)
    assert losers(result) == {"000020000": "000000003", "000010001": "000000003", "000030000": "000010000"}
    assert {row["reason"] for row in result["rejected"].values()} == {"near_duplicate_caption"}
    assert set(result["kept"]) == {"000000003", "000010000", "000000000", "000020001", "000030001"}
    assert result["report"]["candidates"] == 6  # the two without words are not compared
    assert result["report"]["clusters"] == 2


def test_require_image_match_drops_only_when_both_repeat(tmp_path):
    caption = "A red bicycle leaning on a brick wall in Amsterdam"
    a, b = picture(0), picture(1)
    samples = [
        caption_sample("000000000", caption, stored(jpeg(a))),
        caption_sample("000000001", caption, stored(jpeg(b))),  # same caption, other picture: stays
        caption_sample("000000002", caption + "!", stored(jpeg(a, 40))),  # both repeat: goes
        caption_sample("000000003", "Something else entirely about a car", stored(jpeg(a))),  # image only: stays
    ]
    stage = CaptionDedup(CaptionDedup.Params(require_image_match=True))
    assert stage.needs().image and stage.needs().image_fields
    result = run_stage(stage, samples, tmp_path)
    assert losers(result) == {"000000002": "000000000"}
    assert "phash" in result["kept"]["000000001"]  # hashed here, since no dedup_image ran before


def test_require_image_match_reuses_hashes_from_dedup_image(tmp_path):
    caption = "Buy cheap running shoes in size 9 with free shipping today only"
    hashed = {"phash": "b323cccc3333cccc", "colour_grid": "80" * 12}  # no image bytes: fields only
    samples = [caption_sample(key, caption, None, **hashed) for key in ("000000000", "000000001")]
    result = run_stage(CaptionDedup(CaptionDedup.Params(require_image_match=True)), samples, tmp_path)
    assert losers(result) == {"000000001": "000000000"}


def test_caption_only_dedup_runs_before_the_download():
    assert not CaptionDedup().needs().image
    assert CaptionDedup(CaptionDedup.Params(keep="largest")).needs() == Needs(image=True)


def test_bad_threshold_fails_early():
    with pytest.raises(ParamError, match="threshold"):
        CaptionDedup.Params(threshold=1.5)
