"""decontaminate: eval-set loading (folder or Parquet index), matching, and pre-flight checks."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_dedup_image import jpeg, picture, sample, stored

from filters.decontaminate import Decontaminate
from pipeline.dedup.image_signatures import sample_signature
from pipeline.cli import main as curate
from pipeline.core.params import ParamError


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    (folder / "nested").mkdir()
    (folder / "cat.jpg").write_bytes(jpeg(picture(0).resize((640, 480))))  # the eval copy is larger
    (folder / "nested" / "dog.png").write_bytes(jpeg(picture(1)))  # a JPEG named .png: still read
    (folder / "notes.txt").write_text("not an image")
    return folder


def stage_for(eval_set, **params):
    stage = Decontaminate(Decontaminate.Params(eval_set=str(eval_set), **params))
    stage.check()
    stage.setup()
    return stage


def verdict(stage, s):
    stage.score_one(s)
    return stage.keep(s)


def test_eval_images_are_removed_and_named(eval_folder):
    stage = stage_for(eval_folder)
    crawled_copy = sample("000000000", stored(jpeg(picture(0), 45)))
    result = verdict(stage, crawled_copy)
    assert (result.keep, result.reason) == (False, "eval_overlap")
    assert crawled_copy.fields["eval_match"] == "cat.jpg"
    assert 0 <= crawled_copy.fields["eval_distance"] <= 6
    assert verdict(stage, sample("000000001", stored(jpeg(picture(1))))).reason == "eval_overlap"
    other = sample("000000002", stored(jpeg(picture(2))))
    assert verdict(stage, other).keep and "eval_match" not in other.fields


def test_unreadable_sample_is_dropped_with_a_reason(eval_folder):
    assert verdict(stage_for(eval_folder), sample("000000000", b"garbage")).reason == "unreadable_image"


def test_parquet_index_matches_like_the_folder(eval_folder, tmp_path):
    index = tmp_path / "eval.parquet"
    assert curate(["eval-index", str(eval_folder), str(index)]) == 0
    assert pq.read_table(index).column("name").to_pylist() == ["cat.jpg", "nested/dog.png"]
    copy = sample("000000000", stored(jpeg(picture(0), 45)))
    assert verdict(stage_for(index), copy).reason == "eval_overlap"
    assert copy.fields["eval_match"] == "cat.jpg"


def test_parquet_with_only_phash_names_rows_by_number(tmp_path):
    image = stored(jpeg(picture(3)))
    phash = sample_signature(sample("000000009", image), "none").phash
    index = tmp_path / "hashes.parquet"
    pq.write_table(pa.table({"phash": [f"{phash ^ 0b111:016x}", "0123456789abcdef"]}), index)
    copy = sample("000000000", image)
    assert verdict(stage_for(index, max_distance=3), copy).reason == "eval_overlap"
    assert (copy.fields["eval_match"], copy.fields["eval_distance"]) == ("0", 3)
    assert verdict(stage_for(index, max_distance=2), sample("000000001", image)).keep


def test_check_explains_a_bad_eval_set(tmp_path):
    with pytest.raises(ParamError, match="eval_set"):
        Decontaminate().check()
    with pytest.raises(FileNotFoundError):
        Decontaminate(Decontaminate.Params(eval_set=str(tmp_path / "missing"))).check()
    no_hash = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"name": ["a"]}), no_hash)
    with pytest.raises(ValueError, match="phash"):
        Decontaminate(Decontaminate.Params(eval_set=str(no_hash))).check()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        Decontaminate(Decontaminate.Params(eval_set=str(tmp_path / "empty"))).check()
