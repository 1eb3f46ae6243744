"""hashlist: MD5/SHA-256/PDQ known-bad lists, the multi-index lookup, and the stage's verdicts."""
from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.hashlist_eval import build, evaluate
from pipeline.media.hash_index import HASH_BYTES, PdqIndex
from filters.hashlist import HashList
from pipeline.media.hash_lists import HashListError, hash_fields, load_hash_lists
from pipeline.core.registry import get_stage
from pipeline.core.records import Sample
from pipeline.core.stage import DownloadHook


def flipped(hash_bytes: np.ndarray, bits: int, rng: np.random.Generator) -> bytes:
    unpacked = np.unpackbits(hash_bytes)
    unpacked[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(unpacked).tobytes()


def test_index_finds_exactly_what_a_full_scan_finds():
    rng = np.random.default_rng(0)
    listed = rng.integers(0, 256, (20000, HASH_BYTES), dtype=np.uint8)
    index = PdqIndex(listed, 31)
    words = listed.view(np.uint64)
    for bits in [0, 1, 15, 16, 30, 31, 32, 33, 40]:
        for row in rng.choice(len(listed), 20, replace=False):
            query = flipped(listed[row], bits, rng)
            scan = np.bitwise_count(words ^ np.frombuffer(query, np.uint64)).sum(axis=1)
            best = int(scan.argmin())
            expected = (best, int(scan[best])) if scan[best] <= 31 else None
            assert index.nearest(query) == expected, (bits, row)


def test_index_verifies_few_candidates():
    rng = np.random.default_rng(1)
    index = PdqIndex(rng.integers(0, 256, (200000, HASH_BYTES), dtype=np.uint8), 31)
    query = rng.integers(0, 256, HASH_BYTES, dtype=np.uint8).tobytes()
    # 16 chunks x 17 probes x ~3 entries per 16-bit value: about 800, not 200,000.
    assert len(index.candidates(query)) < 2000


def write_list(folder, name: str, lines: list[str]) -> str:
    path = folder / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_list_files_are_parsed_and_bad_lines_named(tmp_path):
    pdq = "ab" * 32
    good = write_list(tmp_path, "good", ["# comment", "", "md5:" + "0" * 32, "1" * 32 + ",extra", pdq + " 90",
                                        "sha256:" + "f" * 64, "pdq:" + "cd" * 32])
    lists = load_hash_lists((f"mine={good}",), 31)
    assert set(lists.exact["md5"]) == {bytes(16), bytes.fromhex("1" * 32)}
    assert list(lists.exact["sha256"].values()) == ["mine"] and lists.pdq_names == ["mine", "mine"]
    bad = write_list(tmp_path, "bad", ["md5:" + "0" * 31])
    with pytest.raises(HashListError, match="bad.txt' line 1"):
        load_hash_lists((bad,), 31)
    with pytest.raises(HashListError, match="cannot read"):
        load_hash_lists((str(tmp_path / "missing.txt"),), 31)
    with pytest.raises(ValueError, match="no lists"):
        HashList().check()


@pytest.fixture(scope="module")
def evaluation():
    return build(listed=6, unrelated=30, seed=0)


def test_altered_copies_are_found_and_unrelated_images_are_not(evaluation):
    result = evaluate(evaluation)
    assert result["copies"] == 6 * 7 and result["recall"] == 1.0
    assert result["max_copy_distance"] <= 31
    assert result["unrelated"] >= 30 and result["false_matches"] == 0


def stage_with(tmp_path, lines: list[str]) -> HashList:
    stage = HashList(HashList.Params(lists=(write_list(tmp_path, "known_bad", lines),)))
    stage.setup()
    return stage


def response(data: bytes) -> SimpleNamespace:
    return SimpleNamespace(data=data)


def sample(index: int = 0) -> Sample:
    return Sample(key=f"{index:06d}", shard_id=0, url=f"http://h/{index}", caption="c")


def test_the_stage_rejects_listed_images_in_the_download_without_repeating_hashes(tmp_path, evaluation):
    from benchmarks.hashlist_eval import altered_copies, picture

    image = picture(np.random.default_rng(42))
    copies = altered_copies(image)
    listed = hash_fields(copies["jpeg95"], 10**8)
    stage = stage_with(tmp_path, ["md5:" + hashlib.md5(copies["jpeg80"]).hexdigest(), "pdq:" + listed["pdq"]])
    exact, near, other = sample(0), sample(1), sample(2)
    assert stage.check_response(exact, response(copies["jpeg80"])) == (False, "hashlist_md5")
    assert exact.fields == {"pdq_quality": exact.fields["pdq_quality"], "hashlist_name": "known_bad",
                            "hashlist_distance": 0}
    assert stage.check_response(near, response(copies["resize0.5"])) == (False, "hashlist_pdq")
    assert 0 < near.fields["hashlist_distance"] <= 31 and "pdq" not in near.fields
    unrelated = evaluation.unrelated[0]
    other.fields.update(unrelated)
    assert stage.keep(other) == (True, None)
    assert stage.keep(sample(3)) == (False, "not_hashed")


def test_low_quality_hashes_never_match(tmp_path):
    flat = hash_fields(_png_of_flat_grey(), 10**8)
    assert flat["pdq_quality"] < 50
    stage = stage_with(tmp_path, ["pdq:" + flat["pdq"]])
    candidate = sample()
    candidate.fields.update({"pdq": flat["pdq"], "pdq_quality": flat["pdq_quality"]})
    assert stage.keep(candidate) == (True, None)


def test_sha256_lists_use_the_pipelines_digest(tmp_path):
    stage = stage_with(tmp_path, ["sha256:" + "e" * 64])
    candidate = sample()
    candidate.sha256 = "e" * 64
    candidate.fields["md5"] = "0" * 32
    assert stage.keep(candidate) == (False, "hashlist_sha256") and candidate.sha256 is None


def test_undecodable_bytes_get_an_md5_only():
    fields = hash_fields(b"not an image", 10**8)
    assert fields == {"md5": hashlib.md5(b"not an image").hexdigest()}


def test_registered():
    assert get_stage("hashlist") is HashList and issubclass(HashList, DownloadHook) and not HashList().needs().pixels


def _png_of_flat_grey() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (300, 300), (128, 128, 128)).save(out, "PNG")
    return out.getvalue()


def test_takedown_matcher_matches_rows_and_stored_images_without_naming_hashes(tmp_path):
    from benchmarks.hashlist_eval import altered_copies, picture
    from pipeline.tools.takedown_hashlist import HashListMatcher

    copies = altered_copies(picture(np.random.default_rng(7)))
    listed = hash_fields(copies["jpeg95"], 10**8)
    path = write_list(tmp_path, "known_bad", ["md5:" + "1" * 32, "pdq:" + listed["pdq"]])
    matcher = HashListMatcher.of((path,))
    assert matcher.needs_images and matcher.reason == "hashlist"
    assert matcher.match_row({"md5": "1" * 32, "sha256": "2" * 64}) == "md5:known_bad (distance 0)"
    assert matcher.match_row({"sha256": "2" * 64}) is None
    rule = matcher.match_image({"sha256": "2" * 64}, copies["resize0.75"])
    assert rule.startswith("pdq:known_bad (distance ") and listed["pdq"] not in rule
    assert matcher.match_image({"pdq": "0" * 64, "pdq_quality": 100}, copies["jpeg95"]) is None  # row already had one
    assert matcher.match_image({}, b"not an image") is None
