"""`curate takedown`: removing opted-out samples from a built dataset."""
import argparse
import glob
import hashlib
import io
import json
import os
import tarfile

import imagehash
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import audit
from pipeline.imaging import ResizeParams, process_image
from pipeline.schema import Sample
from pipeline.takedown import add_takedown_command
from pipeline.writers import OutputParams, write_rejects, write_shard
from tests.test_optout_rules import picture

PER_SHARD = 5
# shard -> (url, kept by the list below?); the last row of each shard was rejected by the run.
SHARDS = {
    0: [("https://a.example.com/1.jpg", False), ("https://ok.org/keep0.jpg", True),
        ("https://ok.org/gallery/x.jpg", False), ("https://ok.org/keep1.jpg", True)],
    1: [("https://OK.org:443/exact.jpg#top", False), ("https://ok.org/sha.jpg", False),
        ("https://ok.org/phash.jpg", False), ("https://ok.org/keep2.jpg", True)],
    2: [("https://ok.org/keep3.jpg", True), ("https://ok.org/keep4.jpg", True)],
    3: [("https://gone.com/a.jpg", False), ("https://img.gone.com/b.jpg", False)],
}
EXPECTED_RULE_KINDS = {"domain": 3, "prefix": 1, "url": 1, "sha256": 1, "phash": 1}


def build_dataset(out, fmt):
    """A dataset as `curate run` writes it (same writers), plus the originals by URL."""
    output = OutputParams(format=fmt, samples_per_shard=PER_SHARD)
    originals, kept, rejected = {}, 0, 0
    for shard_id, rows in SHARDS.items():
        samples = []
        for index, (url, _) in enumerate(rows):
            original = picture((300, 200), seed=shard_id * 10 + index)
            stored = process_image(original, ResizeParams(image_size=64))
            originals[url] = original
            samples.append(Sample(
                key=f"{shard_id:05d}{index}", shard_id=shard_id, url=url, caption=f"caption of {url}",
                extra={"row_id": shard_id * PER_SHARD + index}, image=stored.data, image_format=stored.format,
                width=stored.width, height=stored.height, original_width=300, original_height=200,
                sha256=hashlib.sha256(original).hexdigest(), fields={"score": 0.5},
            ))
        write_shard(output, str(out), shard_id, samples)
        dropped = Sample(key=f"{shard_id:05d}{PER_SHARD - 1}", shard_id=shard_id, url=f"https://x.org/{shard_id}.jpg",
                         extra={"row_id": shard_id * PER_SHARD + PER_SHARD - 1})
        write_rejects(output, str(out), shard_id, [dropped.reject("resolution", "too_small")])
        kept, rejected = kept + len(samples), rejected + 1
    recipe = {"name": "test", "output": vars(output), "stages": [{"resolution": {"min_side": 32}}]}
    audit.write_json(f"{out}/recipe.json", recipe)
    counts = {"kept": kept, "rejected/resolution/too_small": rejected}
    audit.finalize(counts, kept + rejected, [], order=["read", "download", "resolution"], recipe=recipe, output_dir=str(out))
    return originals


def optout_list(tmp_path, originals):
    phash = imagehash.phash(Image.open(io.BytesIO(originals["https://ok.org/phash.jpg"])))
    path = tmp_path / "optout.txt"
    path.write_text(
        "# takedown requests\n"
        "domain:example.com\n"
        "domain:gone.com\n"
        "prefix:https://ok.org/gallery/\n"
        "url:https://ok.org/exact.jpg\n"
        f"sha256:{hashlib.sha256(originals['https://ok.org/sha.jpg']).hexdigest()}\n"
        f"phash:{phash}\n"
    )
    return path


def takedown(*args):
    parser = argparse.ArgumentParser(prog="curate")
    add_takedown_command(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(["takedown", *map(str, args)])
    return parsed.handler(parsed, [])


def shard_rows(out):
    return [row for path in sorted(glob.glob(f"{out}/shards/*.parquet")) for row in pq.read_table(path).to_pylist()]


def reject_rows(out):
    return [row for path in sorted(glob.glob(f"{out}/rejects/*.parquet")) for row in pq.read_table(path).to_pylist()]


def tar_members(path):
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar}


def digests(out):
    return {os.path.relpath(p, out): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in glob.glob(f"{out}/**/*", recursive=True) if os.path.isfile(p)}


def kept_urls():
    return {url for rows in SHARDS.values() for url, kept in rows if kept}


def assert_accounting(out):
    result = audit.read_audit(str(out))
    audit.check_accounting(result)
    counts = result["counts"]
    assert counts["kept"] == len(shard_rows(out))
    assert sum(sum(r.values()) for r in counts["rejected_by_stage"].values()) == len(reject_rows(out))
    return result


@pytest.fixture(params=["webdataset", "parquet"])
def dataset(request, tmp_path):
    out = tmp_path / "dataset"
    originals = build_dataset(out, request.param)
    return out, optout_list(tmp_path, originals), request.param


def test_in_place_removes_every_kind_of_rule_and_keeps_the_accounting(dataset, capsys):
    out, listed, fmt = dataset
    before = shard_rows(out)
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0

    assert {row["url"] for row in shard_rows(out)} == kept_urls()
    assert {row["key"]: row for row in shard_rows(out)} == {row["key"]: row for row in before if row["url"] in kept_urls()}
    removed = [row for row in reject_rows(out) if row["stage"] == "takedown"]
    assert len(removed) == len(before) - len(kept_urls())
    assert {row["reason"] for row in removed} == {"optout_list"}
    kinds = [json.loads(row["fields"])["optout_rule"].partition(":")[0] for row in removed]
    assert {kind: kinds.count(kind) for kind in kinds} == EXPECTED_RULE_KINDS
    assert all(json.loads(row["extra"])["row_id"] >= 0 for row in removed)  # input columns kept for joins

    result = assert_accounting(out)
    assert result["counts"]["input"] == sum(len(rows) for rows in SHARDS.values()) + len(SHARDS)
    assert result["counts"]["rejected_by_stage"]["takedown"] == {"optout_list": len(removed)}
    assert result["stage_order"][-1] == "takedown" and len(result["takedowns"]) == 1
    assert (out / "_SUCCESS").exists()
    assert not glob.glob(f"{out}/**/.*", recursive=True)  # no temporary files left

    manifests = glob.glob(f"{out}/report/takedown-*.json")
    assert len(manifests) == 1
    manifest = json.loads(open(manifests[0]).read())
    assert {r["key"] for r in manifest["removals"]} == {r["key"] for r in removed}
    assert all(set(r) == {"key", "url", "shard", "rule", "removed_at"} for r in manifest["removals"])
    assert manifest["by_rule_kind"] == EXPECTED_RULE_KINDS
    progress = capsys.readouterr().out
    assert "shard 00002 (3/4): unchanged" in progress and "shard 00000 (1/4): removed 2" in progress


def test_webdataset_tars_lose_exactly_the_removed_samples(tmp_path):
    out = tmp_path / "dataset"
    listed = optout_list(tmp_path, build_dataset(out, "webdataset"))
    before = tar_members(out / "shards" / "00000.tar")
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    after = tar_members(out / "shards" / "00000.tar")
    assert after == {name: data for name, data in before.items() if name.split(".")[0] in {"000001", "000003"}}
    import webdataset as wds

    keys = [s["__key__"] for s in wds.WebDataset(sorted(glob.glob(f"{out}/shards/*.tar")), shardshuffle=False)]
    assert keys == [row["key"] for row in shard_rows(out)]


def test_a_shard_left_empty_is_deleted_and_untouched_shards_are_not_rewritten(dataset):
    out, listed, fmt = dataset
    untouched = os.stat(out / "shards" / "00002.parquet")
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    assert not glob.glob(f"{out}/shards/00003.*")
    assert os.stat(out / "shards" / "00002.parquet").st_ino == untouched.st_ino


def test_running_it_twice_removes_nothing_more(dataset):
    out, listed, fmt = dataset
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    first = digests(out)
    first_counts = audit.read_audit(str(out))["counts"]
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    second = digests(out)
    changed = {path for path in second if first.get(path) != second[path]}
    assert all(path.startswith("report/") for path in changed)  # only the audit and a new manifest
    assert audit.read_audit(str(out))["counts"] == first_counts
    manifests = sorted(glob.glob(f"{out}/report/takedown-*.json"), key=os.path.getmtime)
    assert len(manifests) == 2 and json.loads(open(manifests[-1]).read())["removals"] == []
    assert_accounting(out)


def test_an_interrupted_takedown_is_finished_by_running_it_again(dataset, monkeypatch):
    out, listed, fmt = dataset
    from pipeline import takedown as module

    real_rewrite, calls = module._rewrite_shard, []

    def crash_on_second_shard(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the rejects, before the shard rewrite
        return real_rewrite(*args)

    monkeypatch.setattr(module, "_rewrite_shard", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        takedown("--dataset", out, "--optout", listed, "--in-place")
    assert not (out / "_SUCCESS").exists()
    monkeypatch.setattr(module, "_rewrite_shard", real_rewrite)
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    assert {row["url"] for row in shard_rows(out)} == kept_urls()
    keys = [row["key"] for row in reject_rows(out)]
    assert len(keys) == len(set(keys))  # no row rejected twice
    assert_accounting(out)


def test_output_folder_leaves_the_dataset_alone_and_links_unaffected_shards(dataset):
    out, listed, fmt = dataset
    before = digests(out)
    target = out.parent / "cleaned"
    assert takedown("--dataset", out, "--optout", listed, "--output", target) == 0
    assert digests(out) == before
    assert {row["url"] for row in shard_rows(target)} == kept_urls()
    assert os.stat(target / "shards" / "00002.parquet").st_ino == os.stat(out / "shards" / "00002.parquet").st_ino
    assert os.stat(target / "shards" / "00000.parquet").st_ino != os.stat(out / "shards" / "00000.parquet").st_ino
    assert not glob.glob(f"{target}/shards/00003.*")
    assert (target / "recipe.json").exists() and (target / "_SUCCESS").exists()
    assert_accounting(target)
    assert audit.read_audit(str(out))["counts"]["kept"] == len(shard_rows(out))  # the source audit is untouched


def test_output_folder_must_be_empty(dataset, capsys):
    out, listed, fmt = dataset
    assert takedown("--dataset", out, "--optout", listed, "--output", out.parent / "cleaned") == 0
    assert takedown("--dataset", out, "--optout", listed, "--output", out.parent / "cleaned") == 2
    assert "already holds a dataset" in capsys.readouterr().err


def test_phash_distance_zero_needs_an_exact_hash(tmp_path):
    out = tmp_path / "dataset"
    listed = optout_list(tmp_path, build_dataset(out, "parquet"))
    listed.write_text("phash:0123456789abcdef\n")
    assert takedown("--dataset", out, "--optout", listed, "--in-place", "--phash-distance", "0") == 0
    assert len(shard_rows(out)) == sum(len(rows) for rows in SHARDS.values())


def test_errors_are_reported_without_a_traceback(tmp_path, capsys):
    out = tmp_path / "dataset"
    build_dataset(out, "webdataset")
    bad = tmp_path / "bad.txt"
    bad.write_text("domain:ok.org\nwhat:ever\n")
    assert takedown("--dataset", out, "--optout", bad, "--in-place") == 2
    assert "bad.txt:2: unknown kind 'what'" in capsys.readouterr().err
    assert (out / "_SUCCESS").exists()  # nothing was touched
    good = tmp_path / "good.txt"
    good.write_text("domain:ok.org\n")
    assert takedown("--dataset", tmp_path / "nowhere", "--optout", good, "--in-place") == 2
    assert "not a dataset written by `curate run`" in capsys.readouterr().err


def test_output_and_in_place_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit):
        takedown("--dataset", tmp_path, "--optout", tmp_path / "l.txt", "--in-place", "--output", tmp_path / "o")
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        takedown("--dataset", tmp_path, "--optout", tmp_path / "l.txt")
    assert "one of the arguments --output --in-place is required" in capsys.readouterr().err


def test_takedown_of_a_curate_run_output(tmp_path):
    """End to end: `curate run` on a loopback server, then a takedown, twice."""
    import pyarrow as pa

    from pipeline.cli import main
    from pipeline.localweb import LocalWeb

    root = tmp_path / "web"
    (root / "gallery").mkdir(parents=True)
    names = ["a.jpg", "b.jpg", "gallery/c.jpg", "gallery/d.jpg", "e.jpg"]
    for seed, name in enumerate(names):
        (root / name).write_bytes(picture((80, 60), seed=seed))
    (tmp_path / "recipe.yaml").write_text(
        "output: {samples_per_shard: 2}\nstages:\n  - resolution: {min_side: 1}\n")
    out = tmp_path / "out"
    with LocalWeb(root) as web:
        urls = [web.url(name) for name in names]
        pq.write_table(pa.table({"url": urls, "caption": names}), tmp_path / "urls.parquet")
        assert main(["run", "--recipe", str(tmp_path / "recipe.yaml"), "--input", str(tmp_path / "urls.parquet"),
                     "--output", str(out), "--allow-private-network", "--direct_num_workers=1"]) == 0
    listed = tmp_path / "optout.txt"
    listed.write_text(f"prefix:{web.url('gallery/')}\nurl:{web.url('e.jpg')}\n")

    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    assert {row["url"] for row in shard_rows(out)} == set(urls[:2])
    assert not (out / "shards" / "00002.tar").exists()  # e.jpg was alone in shard 2
    result = assert_accounting(out)
    assert result["counts"] == {"input": 5, "kept": 2, "rejected_by_stage": {"takedown": {"optout_list": 3}}}
    files = digests(out)
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    assert {p: d for p, d in digests(out).items() if not p.startswith("report/")} == {
        p: d for p, d in files.items() if not p.startswith("report/")}
    assert assert_accounting(out)["counts"] == result["counts"]
