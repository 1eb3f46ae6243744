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

from pipeline.engine import audit
from pipeline.media.imaging import ResizeParams, process_image
from pipeline.core.records import Sample
from pipeline.tools.takedown import add_takedown_command
from pipeline.engine.writers import OutputParams, write_rejects, write_shard
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


def build_dataset(out, fmt, resize=ResizeParams(image_size=64)):
    """A dataset as `curate run` writes it (same writers), plus the originals by URL."""
    output = OutputParams(format=fmt, samples_per_shard=PER_SHARD)
    originals, kept, rejected = {}, 0, 0
    for shard_id, rows in SHARDS.items():
        samples = []
        for index, (url, _) in enumerate(rows):
            original = picture((300, 200), seed=shard_id * 10 + index)
            stored = process_image(original, resize)
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


def test_a_shard_left_empty_stays_empty_and_untouched_shards_are_not_rewritten(dataset):
    out, listed, fmt = dataset
    untouched = os.stat(out / "shards" / "00002.parquet")
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    assert pq.read_table(out / "shards" / "00003.parquet").num_rows == 0  # kept, so numbers have no gap
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


def test_a_crash_while_switching_files_is_finished_by_running_it_again(dataset, monkeypatch, capsys):
    out, listed, fmt = dataset
    clean = out.parent / "clean"
    assert takedown("--dataset", out, "--optout", listed, "--output", clean) == 0
    from pipeline.tools import staged_switch

    real_move, moves = staged_switch._move, []

    def crash_on_the_third_move(*args):
        moves.append(args)
        if len(moves) == 3:
            raise KeyboardInterrupt  # killed after the commit, half-way through the renames
        return real_move(*args)

    monkeypatch.setattr(staged_switch, "_move", crash_on_the_third_move)
    with pytest.raises(KeyboardInterrupt):
        takedown("--dataset", out, "--optout", listed, "--in-place")
    assert not (out / "_SUCCESS").exists() and (out / ".takedown-staging" / "plan.json").exists()
    monkeypatch.setattr(staged_switch, "_move", real_move)
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    assert "finished the takedown committed at" in capsys.readouterr().out
    assert {p: d for p, d in tree(out).items() if not p.startswith("report")} == {
        p: d for p, d in tree(clean).items() if not p.startswith("report")}  # as if never interrupted
    result = assert_accounting(out)
    assert len(result["takedowns"]) == 2 and result["takedowns"][1]["removed"] == 0


def test_a_takedown_killed_before_its_commit_left_the_old_dataset(dataset):
    out, listed, fmt = dataset
    (out / ".takedown-staging" / "shards").mkdir(parents=True)
    (out / ".takedown-staging" / "shards" / "00000.tar").write_bytes(b"half")  # no plan.json: never committed
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    assert not (out / ".takedown-staging").exists()
    assert {row["url"] for row in shard_rows(out)} == kept_urls()
    assert_accounting(out)


def test_a_plan_older_than_the_dataset_is_refused(dataset, capsys):
    out, listed, fmt = dataset
    (out / ".takedown-staging").mkdir()
    audit.write_json(str(out / ".takedown-staging" / "plan.json"), {
        "moves": ["shards/00000.parquet"], "audit_before": "0" * 64, "audit_after": "1" * 64,
        "committed_at": "2026-01-01T00:00:00+00:00"})
    before = tree(out)
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 2
    assert "was rewritten since" in capsys.readouterr().err
    assert tree(out) == before


def test_a_dataset_in_use_is_refused(dataset, capsys):
    out, listed, fmt = dataset
    from pipeline.engine.output_lock import lock_output_folder

    before = tree(out)
    with lock_output_folder(str(out)):
        assert takedown("--dataset", out, "--optout", listed, "--in-place") == 2
    assert "in use by another curate run or takedown" in capsys.readouterr().err
    assert tree(out) == before


def test_output_folder_leaves_the_dataset_alone_and_links_unaffected_shards(dataset):
    out, listed, fmt = dataset
    before = digests(out)
    target = out.parent / "cleaned"
    assert takedown("--dataset", out, "--optout", listed, "--output", target) == 0
    assert digests(out) == before
    assert {row["url"] for row in shard_rows(target)} == kept_urls()
    assert os.stat(target / "shards" / "00002.parquet").st_ino == os.stat(out / "shards" / "00002.parquet").st_ino
    assert os.stat(target / "shards" / "00000.parquet").st_ino != os.stat(out / "shards" / "00000.parquet").st_ino
    assert pq.read_table(target / "shards" / "00003.parquet").num_rows == 0  # emptied, kept: no gap
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
    from pipeline.demo.localweb import LocalWeb

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
    assert pq.read_table(out / "shards" / "00002.parquet").num_rows == 0  # e.jpg was alone in shard 2
    import webdataset as wds  # the brace pattern a trainer was given still reads, without the removed

    pattern = audit.read_audit(str(out))["shards"]["pattern"]
    assert [s["__key__"] for s in wds.WebDataset(pattern, shardshuffle=False)] == [r["key"] for r in shard_rows(out)]
    stats = json.loads((out / "shards" / "00002_stats.json").read_text())
    assert stats["successes"] == 0 and stats["status_dict"]["takedown/optout_list"] == 1
    result = assert_accounting(out)
    assert result["counts"] == {"input": 5, "kept": 2, "rejected_by_stage": {"takedown": {"optout_list": 3}}}
    files = digests(out)
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    assert {p: d for p, d in digests(out).items() if not p.startswith("report/")} == {
        p: d for p, d in files.items() if not p.startswith("report/")}
    assert assert_accounting(out)["counts"] == result["counts"]


# ------------------------------------------------------------ refusing a broken dataset, leaving it as it was


def tree(folder):
    """Every file (hidden ones too) with its bytes' digest, and every folder: the whole tree to compare."""
    found = {}
    for directory, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(directory, name), folder)] = "folder"
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found


def drop_tar_member(path, name):
    with tarfile.open(path) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar if member.name != name]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))


def append_tar_member(path, name):
    with tarfile.open(path, "a", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))


BREAKAGES = {
    "no audit": (lambda out: os.remove(out / "report" / "audit.json"), "report/audit.json"),
    "tar without parquet": (lambda out: os.remove(out / "shards" / "00001.parquet"), "shards/00001.tar"),
    "parquet without tar": (lambda out: os.remove(out / "shards" / "00002.tar"), "shards/00002.parquet"),
    "no _SUCCESS": (lambda out: os.remove(out / "_SUCCESS"), "_SUCCESS"),
    "a sample missing from a tar": (
        lambda out: [drop_tar_member(out / "shards" / "00002.tar", f"000020.{ext}") for ext in ("jpg", "txt", "json")],
        "shards/00002.tar"),
    "a member twice in a tar": (lambda out: append_tar_member(out / "shards" / "00002.tar", "000020.txt"),
                                "shards/00002.tar"),
    "a half-written temporary file": (
        lambda out: (out / "shards" / ".00001.tar.0123abcd.tmp").write_bytes(b"half"), ".00001.tar.0123abcd.tmp"),
    "an audit that does not add up": (
        lambda out: audit.write_json(str(out / "report" / "audit.json"),
                                     {**audit.read_audit(str(out)), "counts": {"input": 15, "kept": 12,
                                                                                "rejected_by_stage": {"resolution": {"too_small": 3}}}}),
        "report/audit.json"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
@pytest.mark.parametrize("mode", ["--in-place", "--output"])
def test_a_broken_dataset_is_refused_and_left_exactly_as_it_was(tmp_path, capsys, breakage, mode):
    out = tmp_path / "dataset"
    listed = optout_list(tmp_path, build_dataset(out, "webdataset"))
    breaks, named = BREAKAGES[breakage]
    breaks(out)
    before = tree(tmp_path)
    where = ["--in-place"] if mode == "--in-place" else ["--output", tmp_path / "cleaned"]
    assert takedown("--dataset", out, "--optout", listed, *where) == 2
    error = capsys.readouterr().err
    assert named in error and "Traceback" not in error
    assert tree(tmp_path) == before


@pytest.mark.parametrize("into", ["in place", "an output folder"])
def test_a_failure_while_writing_leaves_the_dataset_exactly_as_it_was(dataset, monkeypatch, into):
    out, listed, fmt = dataset
    from pipeline.tools import takedown as module

    real_write, calls = pq.write_table, []

    def fail_on_the_second_parquet(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(module.pq, "write_table", fail_on_the_second_parquet)
    before = tree(out.parent)
    with pytest.raises(OSError, match="injected"):
        module.takedown(str(out), str(listed), None if into == "in place" else str(out.parent / "cleaned"))
    assert len(calls) == 2
    assert tree(out.parent) == before


def test_output_copies_or_rewrites_every_shard(dataset):
    out, listed, fmt = dataset
    target = out.parent / "cleaned"
    assert takedown("--dataset", out, "--optout", listed, "--output", target) == 0
    removed = {r["key"] for path in glob.glob(f"{target}/report/takedown-*.json")
               for r in json.loads(open(path).read())["removals"]}
    for path in sorted(glob.glob(f"{out}/shards/*")):
        name = os.path.basename(path)
        keys = {row["key"] for row in pq.read_table(path.rpartition(".")[0] + ".parquet").to_pylist()}
        assert (target / "shards" / name).exists(), name  # an emptied shard stays, empty: numbers keep no gap
        if keys <= removed:
            assert pq.read_table(target / "shards" / (name.rpartition(".")[0] + ".parquet")).num_rows == 0
    assert set(os.listdir(target / "shards")) == set(os.listdir(out / "shards"))


def test_shard_file_names_need_not_follow_the_keys(dataset):
    """Kept shards may be numbered 00000..N-1 whatever input block their keys come from."""
    out, listed, fmt = dataset
    for path in glob.glob(f"{out}/shards/*"):  # swap shard files 1 and 2 (keys unchanged)
        swapped = {"00001": "00002", "00002": "00001"}.get(os.path.basename(path).split(".")[0])
        if swapped:
            os.rename(path, f"{path}.{swapped}")
    for path in glob.glob(f"{out}/shards/*.0000?"):
        base, _, swapped = path.rpartition(".")
        os.rename(path, f"{os.path.dirname(base)}/{swapped}.{base.rpartition('.')[2]}")
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    assert {row["url"] for row in shard_rows(out)} == kept_urls()
    assert pq.read_table(out / "shards" / "00001.parquet").num_rows == 2  # the untouched keep3/keep4 shard
    assert_accounting(out)


def test_output_from_a_dataset_with_an_interrupted_takedown_is_refused(dataset, capsys):
    out, listed, fmt = dataset
    (out / ".takedown-staging").mkdir()
    (out / ".takedown-staging" / "plan.json").write_text("{}")
    before = tree(out.parent)
    assert takedown("--dataset", out, "--optout", listed, "--output", out.parent / "cleaned") == 2
    assert "an interrupted takedown" in capsys.readouterr().err
    assert tree(out.parent) == before


def test_the_matching_is_pluggable(dataset):
    """A list of another kind (issue 17: hash lists) decides per metadata row, with its own reject reason."""
    out, listed, fmt = dataset
    from pipeline.tools import takedown as module

    class KeyList:
        reason, needs_images, withheld = "key_list", False, frozenset()

        def match_row(self, row):
            return "key:000011" if row["key"] == "000011" else None

        def match_image(self, row, image):
            raise AssertionError("needs_images is False")

        def reject_fields(self, rule):
            return {"key_rule": rule}

        def about(self):
            return {"list": "keys"}

    result = module.takedown(str(out), str(listed), matcher=KeyList(), progress=lambda line: None)
    assert [removal.key for removal in result.removals] == ["000011"]
    assert "000011" not in {row["key"] for row in shard_rows(out)}
    assert assert_accounting(out)["counts"]["rejected_by_stage"]["takedown"] == {"key_list": 1}
    assert [json.loads(row["fields"])["key_rule"] for row in reject_rows(out) if row["stage"] == "takedown"] == [
        "key:000011"]


def test_takedown_keeps_shard_numbers_contiguous_and_stats_true(dataset):
    out, listed, fmt = dataset
    for path in glob.glob(f"{out}/shards/*.parquet"):  # the stats a run writes beside each shard
        rows = pq.read_table(path).num_rows
        stats = {"count": rows + 1, "successes": rows, "filtered": 1, "status_dict": {"success": rows}}
        audit.write_json(path.replace(".parquet", "_stats.json"), stats)
    assert audit.read_audit(str(out))["shards"]["samples"] == len(shard_rows(out))
    names_before = sorted(os.listdir(out / "shards"))
    assert takedown("--dataset", out, "--optout", listed, "--in-place") == 0
    assert sorted(os.listdir(out / "shards")) == names_before  # an emptied shard stays, empty
    for path in sorted(glob.glob(f"{out}/shards/*_stats.json")):
        stats = json.loads(open(path).read())
        rows = pq.read_table(path.replace("_stats.json", ".parquet")).num_rows
        assert stats["successes"] == stats["status_dict"].get("success", 0) == rows, path
    result = audit.read_audit(str(out))
    assert result["shards"]["samples"] == len(shard_rows(out)) == result["counts"]["kept"]
