"""End to end: URL list on a loopback server -> shards, rejects and audit."""
import glob
import hashlib
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.demo.localweb import LocalWeb


def jpeg(size, colour, quality=90):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


# (file name or None for a missing file, caption, expected (stage, reason) or None if kept)
ROWS = [
    ("red.jpg", "A red square on a plain background", None),
    ("green.jpg", "A green square on a plain background", None),
    ("red_copy.jpg", "The same red square again, copied", ("dedup_exact", "duplicate")),
    ("blue.jpg", "x", ("caption", "caption_too_short")),
    ("tiny.jpg", "A tiny blue image that is too small", ("resolution", "too_small")),
    (None, "A link that leads nowhere at all", ("download", "http_404")),
    ("page.jpg", "An HTML page pretending to be a photo", ("download", "not_an_image")),
    ("wide.jpg", "A very wide panorama strip of colour", ("resolution", "bad_aspect_ratio")),
    ("yellow.png", "A yellow square saved as a PNG file", None),
]


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    (root / "red.jpg").write_bytes(jpeg((120, 90), "red"))
    (root / "red_copy.jpg").write_bytes(jpeg((120, 90), "red"))
    (root / "green.jpg").write_bytes(jpeg((90, 120), "green"))
    (root / "blue.jpg").write_bytes(jpeg((100, 100), "blue"))
    (root / "tiny.jpg").write_bytes(jpeg((8, 8), "blue"))
    (root / "wide.jpg").write_bytes(jpeg((700, 70), "purple"))
    (root / "page.jpg").write_bytes(b"<html><body>not an image</body></html>")
    png = io.BytesIO()
    Image.new("RGBA", (64, 64), (255, 255, 0, 128)).save(png, "PNG")
    (root / "yellow.png").write_bytes(png.getvalue())
    with LocalWeb(root) as server:
        yield server


@pytest.fixture(scope="module")
def input_list(web, tmp_path_factory):
    rows = [
        {"url": web.url(name or "missing.jpg"), "caption": caption, "row_id": i}
        for i, (name, caption, _) in enumerate(ROWS)
    ]
    path = tmp_path_factory.mktemp("input") / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run_curate(input_path, output, *extra):
    args = [
        "run", "--recipe", "manifests/local-sample.yaml", "--input", str(input_path),
        "--output", str(output), "--allow-private-network", "--set", "output.samples_per_shard=4",
        *extra,
    ]
    assert main(args) == 0


@pytest.fixture(scope="module")
def output(input_list, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    run_curate(input_list, out, "--direct_num_workers=1")
    return out


def shard_rows(out):
    tables = [pq.read_table(p) for p in sorted(glob.glob(f"{out}/shards/*.parquet"))]
    return pa.concat_tables(tables).to_pylist() if tables else []


def output_digests(out) -> dict[str, str]:
    """SHA-256 of every shard and rejects file, by path in the output."""
    return {
        os.path.relpath(p, out): hashlib.sha256(open(p, "rb").read()).hexdigest()
        for p in sorted(glob.glob(f"{out}/shards/*") + glob.glob(f"{out}/rejects/*"))
    }


def reject_rows(out):
    tables = [pq.read_table(p) for p in sorted(glob.glob(f"{out}/rejects/*.parquet"))]
    return pa.concat_tables(tables).to_pylist()


def test_every_row_ends_once_in_shards_or_rejects_with_the_expected_reason(output):
    kept = {row["row_id"]: row for row in shard_rows(output)}
    rejected = {json.loads(row["extra"])["row_id"]: row for row in reject_rows(output)}
    assert not set(kept) & set(rejected)
    assert set(kept) | set(rejected) == set(range(len(ROWS)))
    for i, (_, _, expected) in enumerate(ROWS):
        if expected is None:
            assert i in kept, ROWS[i]
        else:
            assert (rejected[i]["stage"], rejected[i]["reason"]) == expected, ROWS[i]


def test_audit_counts_add_up(output):
    audit = json.loads((output / "report" / "audit.json").read_text())
    counts = audit["counts"]
    rejected = sum(sum(r.values()) for r in counts["rejected_by_stage"].values())
    assert counts["input"] == len(ROWS) == counts["kept"] + rejected
    assert counts["rejected_by_stage"]["download"] == {"http_404": 1, "not_an_image": 1}
    assert (output / "_SUCCESS").exists()


def test_duplicate_names_the_sample_kept(output):
    dup = next(r for r in reject_rows(output) if r["reason"] == "duplicate")
    kept_keys = {row["key"] for row in shard_rows(output)}
    assert json.loads(dup["fields"])["duplicate_of"] in kept_keys


def test_keys_name_input_rows_and_shards_are_numbered_without_gaps(output):
    rows = shard_rows(output)
    for row in rows:
        assert row["shard_id"] == row["row_id"] // 4  # the input block, as keys say
        assert row["key"].startswith(f"{row['shard_id']:05d}")
        assert row["width"] == row["height"] == 256  # border mode pads to a square
    # Input block 1 (rows 4-7) kept nothing: block 2's samples are shard 00001, not a gap.
    assert {row["shard_id"] for row in rows} == {0, 2}
    assert sorted(os.path.basename(p) for p in glob.glob(f"{output}/shards/*")) == [
        "00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar", "00001_stats.json",
    ]
    for folder in ("shards", "rejects"):  # one schema per kind of file, whatever each file holds
        assert len({pq.read_schema(p) for p in glob.glob(f"{output}/{folder}/*.parquet")}) == 1


def test_audit_gives_the_brace_pattern_a_trainer_takes(output, capsys):
    import webdataset as wds

    from pipeline.engine.audit import summary_table

    shards = json.loads((output / "report" / "audit.json").read_text())["shards"]
    assert shards == {"count": 2, "samples": 3, "pattern": f"{output}/shards/{{00000..00001}}.tar"}
    assert shards["pattern"] in summary_table(json.loads((output / "report" / "audit.json").read_text()))
    assert len(list(wds.WebDataset(shards["pattern"], shardshuffle=False))) == shards["samples"]


def test_stats_files_count_every_input_row_once(output):
    stats = [json.loads(open(p).read()) for p in sorted(glob.glob(f"{output}/shards/*_stats.json"))]
    assert sum(s["count"] for s in stats) == len(ROWS)
    assert sum(s["successes"] for s in stats) == 3
    assert [s["input_blocks"] for s in stats] == [[0, 1], [2]]  # empty block 1 is counted with shard 0
    assert (stats[0]["failed_to_download"], stats[0]["failed_to_resize"]) == (1, 1)  # http_404, not_an_image
    assert stats[1]["status_dict"] == {"success": 1}


def test_webdataset_library_reads_the_shards(output):
    import webdataset as wds

    dataset = wds.WebDataset(sorted(glob.glob(f"{output}/shards/*.tar")), shardshuffle=False)
    samples = list(dataset.decode("pil").to_tuple("__key__", "jpg", "txt", "json"))
    assert len(samples) == sum(1 for row in ROWS if row[2] is None)
    by_key = {row["key"]: row for row in shard_rows(output)}
    for key, image, caption, meta in samples:
        assert image.size == (256, 256)
        assert caption == by_key[key]["caption"] == meta["caption"]
        assert meta["sha256"] == by_key[key]["sha256"]


def test_no_temporary_files_are_left(output):
    leftovers = [p for p in glob.glob(f"{output}/**/.*", recursive=True)]
    assert leftovers == []


def test_rerun_gives_identical_shards_with_more_workers(input_list, output, tmp_path):
    again = tmp_path / "again"
    run_curate(input_list, again, "--direct_num_workers=2", "--direct_running_mode=multi_processing")

    assert output_digests(again) == output_digests(output)
    from pipeline.engine.run import worker_log_path

    assert not worker_log_path().exists()  # worker output is kept only for failed runs


def test_both_fetchers_give_identical_shards_and_rejects(input_list, output, tmp_path):
    """The two fetchers keep and reject the same rows for the same reasons, byte for byte.  The module's run
    left `download.fetcher` at "auto", which takes the thread fetcher for rows run in this process; recipe.json
    says which ran."""
    event_loop = tmp_path / "async"
    run_curate(input_list, event_loop, "--direct_num_workers=1", "--set", "download.fetcher=async")

    assert output_digests(event_loop) == output_digests(output)
    fetchers = [json.loads((out / "recipe.json").read_text())["download"]["fetcher"] for out in (output, event_loop)]
    assert fetchers == ["threads", "async"]


def test_refuses_to_overwrite_without_flag(input_list, output, capsys):
    args = ["run", "--recipe", "manifests/local-sample.yaml", "--input", str(input_list), "--output", str(output)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_bad_recipe_fails_before_running(input_list, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - caption: {min_chars: lots}\n")
    args = ["run", "--recipe", str(bad), "--input", str(input_list), "--output", str(tmp_path / "o")]
    assert main(args) == 2
    assert "line 2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_loopback_is_blocked_without_the_flag(input_list, tmp_path):
    out = tmp_path / "guarded"
    args = ["run", "--recipe", "manifests/local-sample.yaml", "--input", str(input_list), "--output", str(out),
            "--direct_num_workers=1"]
    assert main(args) == 0
    audit = json.loads((out / "report" / "audit.json").read_text())
    assert audit["counts"]["kept"] == 0
    assert audit["shards"] == {"count": 0, "samples": 0, "pattern": None}
    assert (out / "shards").is_dir() and not list((out / "shards").iterdir())
    downloads = audit["counts"]["rejected_by_stage"]["download"]
    assert downloads == {"blocked_address": len(ROWS) - 1}  # the short caption is dropped before download


@pytest.mark.parametrize("runner", [[], ["--runner=DirectRunner"]])
def test_local_runner_never_starts_prism(input_list, tmp_path, monkeypatch, runner):
    from apache_beam.runners.portability import prism_runner

    def refuse(*args, **kwargs):
        raise AssertionError("the Prism runner was started")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", refuse)
    monkeypatch.setattr(prism_runner.PrismJobServer, "__init__", refuse)
    run_curate(input_list, tmp_path / "o", "--direct_num_workers=1", *runner)
    assert (tmp_path / "o" / "_SUCCESS").exists()


def test_input_that_breaks_mid_file_fails_the_run_with_a_clear_message(tmp_path, capsys):
    import gzip

    lines = ["url,caption"] + [f"http://127.0.0.1:9/{i}.jpg,row number {i} of many" for i in range(20000)]
    data = gzip.compress("\n".join(lines).encode())
    broken = tmp_path / "urls.csv.gz"
    broken.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "o"
    args = ["run", "--recipe", "manifests/local-sample.yaml", "--input", str(broken), "--output", str(out),
            "--direct_num_workers=1", "--set", "caption.min_words=99"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the run failed" in err and "urls.csv.gz" in err
    assert not (out / "_SUCCESS").exists()


def test_missing_model_weights_fail_before_the_run(input_list, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - clip_score: {model: ViT-B-32, pretrained: /nowhere/ViT-B-32.pt}\n")
    args = ["run", "--recipe", str(recipe), "--input", str(input_list), "--output", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "stage 'clip_score'" in err and "/nowhere/ViT-B-32.pt" in err
    assert not (tmp_path / "o").exists()


def test_extra_columns_whose_types_differ_across_rows_and_files_get_one_schema(web, tmp_path):
    """Issue 11.4 / 12.4: `x` is an int then a string, `meta` an empty object, `score` a string in
    CSV, an int in JSONL and a float in Parquet, `note` null in whole shards: once failed the run."""
    import pyarrow.dataset as ds

    folder = tmp_path / "in"
    folder.mkdir()
    url = web.url("red.jpg")
    (folder / "a.csv").write_text(f"url,caption,score\n{url},from csv,high\n")
    jsonl = [{"url": url, "caption": "jsonl one", "score": 3, "x": 1, "meta": {}, "note": None},
             {"url": url, "caption": "jsonl two", "score": 4, "x": "one", "meta": {}, "note": None},
             {"url": url, "caption": "jsonl three", "score": 5, "x": 2, "note": "written"}]
    (folder / "b.jsonl").write_text("\n".join(json.dumps(row) for row in jsonl) + "\n")
    pq.write_table(pa.Table.from_pylist([{"url": url, "caption": "from parquet", "score": 0.5}]), folder / "c.parquet")
    recipe = tmp_path / "bare.yaml"
    recipe.write_text("output: {samples_per_shard: 2}\nstages: []\n")
    out = tmp_path / "out"
    assert main(["run", "--recipe", str(recipe), "--input", str(folder), "--output", str(out),
                 "--allow-private-network", "--direct_num_workers=1"]) == 0
    paths = sorted(glob.glob(f"{out}/shards/*.parquet"))
    assert len(paths) == 3 and len({pq.read_schema(p) for p in paths}) == 1
    rows = ds.dataset(paths).to_table().to_pylist()
    assert [row["score"] for row in rows] == ["high", "3", "4", "5", "0.5"]  # no common type: JSON text
    assert [row["x"] for row in rows] == [None, "1", "one", "2", None]
    assert [row["note"] for row in rows] == [None, None, None, "written", None]
    assert {row["meta"] for row in rows} == {None, "{}"}
    assert glob.glob(f"{out}/rejects/*") == []


@pytest.mark.parametrize("files, counted", [(1, False), (2, True)])
def test_rows_of_one_input_file_are_keyed_without_waiting_for_a_count_of_the_files(tmp_path, files, counted):
    """Keys need the rows of the files before a row's own; one file has none, so its rows need no
    count (a side input that holds every row back until all are read)."""
    import apache_beam as beam

    from pipeline.engine.recipe import load_recipe
    from pipeline.engine.run import InputSpec, build_pipeline

    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages: []\n")
    paths = tuple(str(tmp_path / f"urls{i}.txt") for i in range(files))
    pipeline = beam.Pipeline()
    build_pipeline(pipeline, load_recipe(recipe), InputSpec(paths), str(tmp_path / "o"))
    names = [t.unique_name for t in pipeline.to_runner_api().components.transforms.values()]
    assert any("CountPerFile" in name for name in names) == counted
