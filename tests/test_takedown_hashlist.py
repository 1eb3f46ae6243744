"""`curate takedown --hashlist`: cleaning a built dataset when a known-bad hash list is updated."""
import glob
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.media.hash_lists import hash_fields
from pipeline.media.imaging import ResizeParams
from tests.test_takedown import assert_accounting, build_dataset, reject_rows, shard_rows, takedown, tree

# Stored as a run with `resize: {image_size: 128, encode_quality: 60}` stores them: scaled down,
# border-padded to a square, re-encoded at JPEG quality 60.
STORED = ResizeParams(image_size=128, encode_quality=60)
BY_PDQ = "https://ok.org/keep3.jpg"  # listed by the PDQ of its original download
BY_MD5 = "https://ok.org/keep0.jpg"  # listed by MD5; its shard was built with the hashlist stage's columns
BY_SHA256 = "https://ok.org/sha.jpg"


def add_hash_columns(shard_path, originals):
    """The md5/pdq/pdq_quality columns the hashlist stage adds to every row of a run."""
    table = pq.read_table(shard_path)
    fields = [hash_fields(originals[url], 10**8) for url in table.column("url").to_pylist()]
    for name in ("md5", "pdq", "pdq_quality"):
        table = table.append_column(name, pa.array([f[name] for f in fields]))
    pq.write_table(table, shard_path)


@pytest.fixture
def dataset(tmp_path):
    out = tmp_path / "dataset"
    originals = build_dataset(out, "webdataset", STORED)
    add_hash_columns(out / "shards" / "00000.parquet", originals)
    return out, originals


def write_list(path, lines):
    path.write_text("# known-bad images\n" + "".join(f"{line}\n" for line in lines))
    return path


def listed_hashes(originals):
    return {"pdq": hash_fields(originals[BY_PDQ], 10**8)["pdq"], "md5": hashlib.md5(originals[BY_MD5]).hexdigest(),
            "sha256": hashlib.sha256(originals[BY_SHA256]).hexdigest()}


def text_of_everything_written(out):
    """The rejects' rows and every report file (audit, manifest, html) as text."""
    texts = [json.dumps(reject_rows(out), default=str)]
    texts += [open(path, encoding="utf-8", errors="replace").read() for path in glob.glob(f"{out}/report/*")]
    return "\n".join(texts).lower()


def test_listed_images_are_removed_even_re_encoded_and_resized_and_no_hash_is_repeated(dataset, tmp_path, capsys):
    out, originals = dataset
    hashes = listed_hashes(originals)
    perceptual = write_list(tmp_path / "pdq.txt", [f"pdq:{hashes['pdq']}", "ab" * 32])
    exact = write_list(tmp_path / "exact.csv", [f"{hashes['md5']},extra column", f"sha256:{hashes['sha256']}"])
    before = shard_rows(out)

    assert takedown("--dataset", out, "--hashlist", f"known_bad={perceptual}", "--hashlist", exact, "--in-place") == 0

    removed_urls = {BY_PDQ, BY_MD5, BY_SHA256}
    assert {row["url"] for row in shard_rows(out)} == {row["url"] for row in before} - removed_urls
    rejects = {row["url"]: row for row in reject_rows(out) if row["stage"] == "takedown"}
    assert set(rejects) == removed_urls and {row["reason"] for row in rejects.values()} == {"hashlist"}
    fields = {url: json.loads(row["fields"]) for url, row in rejects.items()}
    assert fields[BY_MD5] == {"hashlist_name": "exact", "hashlist_kind": "md5", "hashlist_distance": 0,
                              "width": 128, "height": 128, "original_width": 300, "original_height": 200}
    assert fields[BY_SHA256]["hashlist_name"] == "exact" and fields[BY_SHA256]["hashlist_kind"] == "sha256"
    assert fields[BY_PDQ]["hashlist_name"] == "known_bad" and fields[BY_PDQ]["hashlist_kind"] == "pdq"
    assert 0 < fields[BY_PDQ]["hashlist_distance"] <= 31  # the stored copy is not the listed image
    assert not {"md5", "pdq", "sha256"} & set(json.loads(rejects[BY_MD5]["extra"]))

    result = assert_accounting(out)
    assert result["counts"]["rejected_by_stage"]["takedown"] == {"hashlist": 3}
    about = result["takedowns"][-1]
    assert about["hashlist_entries"] == {"known_bad": {"pdq": 2}, "exact": {"md5": 1, "sha256": 1}}
    assert about["pdq_max_distance"] == 31 and about["pdq_min_quality"] == 50
    from pipeline.cli import main

    assert main(["report", str(out)]) == 0  # the html report renders the rejects too
    written = text_of_everything_written(out) + capsys.readouterr().out.lower()
    for kind, digest in hashes.items():
        assert digest not in written, kind
    assert takedown("--dataset", out, "--hashlist", f"known_bad={perceptual}", "--in-place") == 0  # nothing more
    assert len(shard_rows(out)) == len(before) - 3


def test_distance_and_quality_floor_are_the_command_lines(dataset, tmp_path):
    out, originals = dataset
    listed = write_list(tmp_path / "pdq.txt", [f"pdq:{listed_hashes(originals)['pdq']}"])
    before = tree(out)
    assert takedown("--dataset", out, "--hashlist", listed, "--pdq-distance", "4", "--in-place") == 0
    assert takedown("--dataset", out, "--hashlist", listed, "--pdq-min-quality", "100", "--in-place") == 0
    assert {p: d for p, d in tree(out).items() if not p.startswith("report")} == {
        p: d for p, d in before.items() if not p.startswith("report")}


BAD_LISTS = {
    "a line that is not a hash": ("md5:" + "0" * 32 + "\nnot a hash\n", "line 3: expected md5:, sha256: or pdq:"),
    "a short md5": ("md5:abc\n", "line 2: expected"),
    "not text": (b"\xff\xfe\x00bad", "cannot read it"),
}


@pytest.mark.parametrize("bad", sorted(BAD_LISTS))
def test_a_bad_list_is_a_readable_error_and_the_dataset_is_left_byte_identical(dataset, tmp_path, capsys, bad):
    out, originals = dataset
    content, message = BAD_LISTS[bad]
    path = tmp_path / "bad.txt"
    path.write_bytes(b"# list\n" + (content.encode() if isinstance(content, str) else content))
    before = tree(tmp_path)
    assert takedown("--dataset", out, "--hashlist", f"iwf={path}", "--in-place") == 2
    error = capsys.readouterr().err
    assert message in error and "bad.txt" in error and "Traceback" not in error
    assert tree(tmp_path) == before


def test_a_missing_list_or_bad_options_are_refused_before_anything_changes(dataset, tmp_path, capsys):
    out, originals = dataset
    before = tree(tmp_path)
    assert takedown("--dataset", out, "--hashlist", tmp_path / "nowhere.txt", "--in-place") == 2
    assert "nowhere.txt" in capsys.readouterr().err
    listed = write_list(tmp_path / "ok.txt", ["ab" * 32])
    before = tree(tmp_path)
    assert takedown("--dataset", out, "--hashlist", listed, "--pdq-distance", "64", "--in-place") == 2
    assert "--pdq-distance must be within [0, 63]" in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_optout_and_hashlist_go_in_two_takedowns(tmp_path, capsys):
    with pytest.raises(SystemExit):
        takedown("--dataset", tmp_path, "--optout", tmp_path / "o.txt", "--hashlist", tmp_path / "h.txt", "--in-place")
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        takedown("--dataset", tmp_path, "--in-place")
    assert "one of the arguments --optout --hashlist is required" in capsys.readouterr().err


def test_an_updated_list_is_read_again(dataset, tmp_path):
    """The stage caches lists per process; a takedown reads the file as it is now."""
    out, originals = dataset
    listed = write_list(tmp_path / "bad.txt", ["ab" * 32])
    assert takedown("--dataset", out, "--hashlist", listed, "--in-place") == 0
    assert not [row for row in reject_rows(out) if row["stage"] == "takedown"]
    write_list(listed, [f"pdq:{listed_hashes(originals)['pdq']}"])
    assert takedown("--dataset", out, "--hashlist", listed, "--in-place") == 0
    assert [row["url"] for row in reject_rows(out) if row["stage"] == "takedown"] == [BY_PDQ]
