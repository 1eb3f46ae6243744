"""dedup_image as a Beam stage: global clusters, keep policies, hot keys, determinism, end to end."""
from __future__ import annotations

import glob
import io
import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from filters.dedup_image import ImageDedup
from pipeline.dedup.image_signatures import sample_signature
from pipeline.media.imaging import ResizeParams, process_image
from pipeline.core.params import ParamError
from pipeline.core.records import Sample

# ---------------------------------------------------------------- helpers shared by the dedup tests


def picture(seed: int, size=(320, 240)) -> Image.Image:
    """A textured picture: gradient, shapes and noise, all from `seed`."""
    rng = np.random.default_rng(seed)
    width, height = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    image = Image.fromarray(((top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(10):
        x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(10, 60))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noise = rng.normal(0, 15, (height, width, 1)).repeat(3, axis=2)
    pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1))


def jpeg(image: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def stored(data: bytes) -> bytes:
    """The image as the pipeline hands it to stages (256 px, border, JPEG)."""
    return process_image(data, ResizeParams()).data


def sample(key: str, image: bytes | None, **fields) -> Sample:
    s = Sample(key=key, shard_id=int(key[:5]), url=f"http://example.com/{key}.jpg", image=image, fields=dict(fields))
    s.original_width, s.original_height = 320, 240
    return s


def run_stage(stage, samples, tmp_path, options: list[str] | None = None) -> dict:
    """Runs a DatasetStage on `samples`; returns {"kept": {key: fields}, "rejected": {key: row}, "report": dict}."""
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    pipeline = test_pipeline.TestPipeline(runner=FnApiRunner(), options=PipelineOptions(options or []))
    with pipeline:
        result = pipeline | beam.Create(samples) | stage.transform()
        as_json = {
            "kept": lambda s: json.dumps([s.key, s.fields]),
            "rejected": lambda r: json.dumps([r.key, {"stage": r.stage, "reason": r.reason, **r.fields}]),
            "report": json.dumps,
        }
        for name, to_json in as_json.items():
            _ = result[name] | f"{name}Json" >> beam.Map(to_json) | f"Write{name}" >> beam.io.WriteToText(f"{out}/{name}")

    def read(name):
        return [json.loads(line) for path in sorted(glob.glob(f"{out}/{name}-*")) for line in open(path)]

    reports = read("report")
    assert len(reports) == 1, "a stage report is exactly one dict"
    return {"kept": dict(read("kept")), "rejected": dict(read("rejected")), "report": reports[0]}


def losers(result) -> dict[str, str]:
    return {key: row["duplicate_of"] for key, row in result["rejected"].items() if "duplicate_of" in row}


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def pictures():
    return {seed: picture(seed) for seed in range(6)}


@pytest.fixture(scope="module")
def spread_samples(pictures):
    """Copies of pictures 0 and 1 spread over shards 0-3; pictures 2-4 appear once."""
    a, b = pictures[0], pictures[1]
    return [
        sample("000030001", stored(jpeg(a, 40))),  # a, re-encoded, late shard
        sample("000000005", stored(jpeg(a))),  # a, the earliest key
        sample("000010002", stored(jpeg(a.resize((160, 120))))),  # a, resized
        sample("000020000", stored(jpeg(b))),
        sample("000000009", stored(jpeg(ImageEnhance.Brightness(b).enhance(1.15)))),  # b, brighter, earlier key
        sample("000010000", stored(jpeg(pictures[2]))),
        sample("000020001", stored(jpeg(pictures[3]))),
        sample("000030000", stored(jpeg(pictures[4]))),
    ]


EXPECTED_LOSERS = {"000030001": "000000005", "000010002": "000000005", "000020000": "000000009"}


@pytest.fixture(scope="module")
def spread_result(spread_samples, tmp_path_factory):
    return run_stage(ImageDedup(), spread_samples, tmp_path_factory.mktemp("spread"))


def test_near_duplicates_are_found_across_shards(spread_samples, spread_result):
    result = spread_result
    assert losers(result) == EXPECTED_LOSERS
    assert {row["reason"] for row in result["rejected"].values()} == {"near_duplicate"}
    assert {row["stage"] for row in result["rejected"].values()} == {"dedup_image"}
    assert set(result["kept"]) == {s.key for s in spread_samples} - set(EXPECTED_LOSERS)
    for fields in result["kept"].values():
        assert len(fields["phash"]) == 16 and len(fields["colour_grid"]) == 24


def test_report_describes_the_clusters(spread_result):
    report = spread_result["report"]
    assert report["candidates"] == 8 and report["clusters"] == 2 and report["dropped"] == 3
    assert report["cluster_size_histogram"] == {"2": 1, "3-4": 1}
    assert report["largest_clusters"][0] == {
        "size": 3, "kept": "000000005", "example_duplicates": ["000010002", "000030001"]
    }
    assert report["settings"]["max_distance"] == ImageDedup.Params().max_distance
    assert report["hot_fingerprints"]["count"] == 0 and report["unresolved"] == 0


@pytest.mark.slow
def test_same_result_with_two_worker_processes(spread_samples, spread_result, tmp_path):
    two = run_stage(ImageDedup(), spread_samples, tmp_path,
                    ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert losers(two) == EXPECTED_LOSERS
    assert two == spread_result


def test_keep_largest_and_keep_clip_score(pictures, tmp_path):
    small = sample("000000000", stored(jpeg(pictures[0].resize((160, 120)))), clip_score=0.31)
    large = sample("000000001", stored(jpeg(pictures[0])), clip_score=0.25)
    small.original_width, small.original_height = 160, 120
    largest = run_stage(ImageDedup(ImageDedup.Params(keep="largest")), [small, large], tmp_path)
    assert losers(largest) == {"000000000": "000000001"}
    best_score = run_stage(ImageDedup(ImageDedup.Params(keep="clip_score")), [small, large], tmp_path)
    assert losers(best_score) == {"000000001": "000000000"}


def test_every_sample_is_kept_or_rejected_once(pictures, tmp_path):
    samples = [
        sample("000000000", stored(jpeg(pictures[5]))),
        sample("000000001", stored(jpeg(pictures[5], 35))),
        sample("000000002", b"not an image"),
        sample("000000003", None),
        sample("000000004", stored(jpeg(pictures[2]))),
    ]
    result = run_stage(ImageDedup(), samples, tmp_path)
    assert set(result["kept"]) | set(result["rejected"]) == {s.key for s in samples}
    assert not set(result["kept"]) & set(result["rejected"])
    reasons = {key: row["reason"] for key, row in result["rejected"].items()}
    assert reasons == {"000000001": "near_duplicate", "000000002": "unreadable_image", "000000003": "unreadable_image"}


def test_hot_keys_are_capped_and_reported(tmp_path):
    blank = stored(jpeg(Image.new("RGB", (300, 300), "white")))
    samples = [sample(f"0000{i // 10 + 1}{i % 10:04d}", blank) for i in range(25)]
    # An almost blank sample with an earlier key wins over the whole collapsed group.
    blank_hash = int(sample_signature(sample("000000009", blank), "none").phash)
    samples.append(sample("000000001", None, phash=f"{blank_hash ^ 1:016x}", colour_grid="fc" * 12))
    # Distinct low-detail hashes in one dark colour: every one shares the zero band values.
    for i in range(15):
        samples.append(sample(f"00009{i:04d}", None, phash=f"{1 << (63 - i):016x}", colour_grid="10" * 12))
    result = run_stage(ImageDedup(ImageDedup.Params(max_group_size=10)), samples, tmp_path)
    report = result["report"]
    assert report["hot_fingerprints"]["count"] == 1
    hot = report["hot_fingerprints"]["largest"][0]
    assert (hot["samples"], hot["kept"]) == (25, "000010000")  # the group's representative
    assert report["hot_band_keys"]["count"] >= 1
    assert all(hot["sub_buckets"] == 2 for hot in report["hot_band_keys"]["largest"])
    blank_losers = {k: v for k, v in losers(result).items() if not k.startswith("00009")}
    assert blank_losers == {s.key: "000000001" for s in samples[:25]}
    assert len(result["kept"]) + len(result["rejected"]) == len(samples)


def test_empty_input_still_reports(tmp_path):
    result = run_stage(ImageDedup(), [], tmp_path)
    assert result["kept"] == {} and result["rejected"] == {}
    assert result["report"]["candidates"] == 0 and result["report"]["clusters"] == 0


def test_bad_parameters_fail_early():
    with pytest.raises(ParamError, match="max_distance"):
        ImageDedup.Params(max_distance=40)
    with pytest.raises(ParamError, match="max_group_size"):
        ImageDedup.Params(max_group_size=1)


def test_second_hash_is_stored_and_can_veto(pictures, tmp_path):
    samples = [sample("000000000", stored(jpeg(pictures[0]))), sample("000000001", stored(jpeg(pictures[0], 40)))]
    result = run_stage(ImageDedup(ImageDedup.Params(second_hash="dhash")), samples, tmp_path)
    assert losers(result) == {"000000001": "000000000"}
    assert len(result["kept"]["000000000"]["dhash"]) == 16
    rougher = [sample("000000000", stored(jpeg(pictures[0]))),
               sample("000000001", stored(jpeg(pictures[0].resize((100, 75)), 30)))]
    assert losers(run_stage(ImageDedup(), rougher, tmp_path)) == {"000000001": "000000000"}
    strict = run_stage(ImageDedup(ImageDedup.Params(second_hash="dhash", second_max_distance=0)), rougher, tmp_path)
    assert losers(strict) == {}  # the pHashes are close, the dHashes not identical: vetoed


# ---------------------------------------------------------------- end to end


def test_cli_run_removes_near_duplicates_across_input_files(tmp_path, pictures):
    from pipeline.cli import main
    from pipeline.demo.localweb import LocalWeb

    web_root = tmp_path / "web"
    web_root.mkdir()
    files = {
        "a.jpg": jpeg(pictures[0]), "b.jpg": jpeg(pictures[1]), "c.jpg": jpeg(pictures[2]),
        "a_small.jpg": jpeg(pictures[0].resize((200, 150)), 50),
        "b_bright.jpg": jpeg(ImageEnhance.Brightness(pictures[1]).enhance(0.9)),
        "d.jpg": jpeg(pictures[3]),
    }
    for name, data in files.items():
        (web_root / name).write_bytes(data)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("stages:\n  - dedup_exact\n  - dedup_image: {max_distance: 6}\n")
    with LocalWeb(web_root) as web:
        first = [{"url": web.url(n), "caption": f"picture {n}"} for n in ("a.jpg", "b.jpg", "c.jpg")]
        second = [{"url": web.url(n), "caption": f"picture {n}"} for n in ("a_small.jpg", "b_bright.jpg", "d.jpg")]
        pq.write_table(pa.Table.from_pylist(first), tmp_path / "part1.parquet")
        pq.write_table(pa.Table.from_pylist(second), tmp_path / "part2.parquet")
        out = tmp_path / "out"
        args = ["run", "--recipe", str(recipe), "--input", str(tmp_path / "part1.parquet"), "--input",
                str(tmp_path / "part2.parquet"), "--output", str(out), "--allow-private-network",
                "--set", "output.samples_per_shard=2", "--direct_num_workers=1"]
        assert main(args) == 0

    rejects = pa.concat_tables([pq.read_table(p) for p in glob.glob(f"{out}/rejects/*.parquet")]).to_pylist()
    kept = pa.concat_tables([pq.read_table(p) for p in glob.glob(f"{out}/shards/*.parquet")]).to_pylist()
    key_of = {row["url"].rsplit("/", 1)[1]: row["key"] for row in kept + rejects}
    near = {row["url"].rsplit("/", 1)[1]: json.loads(row["fields"])["duplicate_of"]
            for row in rejects if row["reason"] == "near_duplicate"}
    assert near == {"a_small.jpg": key_of["a.jpg"], "b_bright.jpg": key_of["b.jpg"]}
    assert {row["url"].rsplit("/", 1)[1] for row in kept} == {"a.jpg", "b.jpg", "c.jpg", "d.jpg"}
    audit = json.loads((out / "report" / "audit.json").read_text())
    assert audit["counts"]["rejected_by_stage"]["dedup_image"] == {"near_duplicate": 2}
    assert audit["dedup"]["dedup_image"]["clusters"] == 2
    assert audit["counts"]["input"] == audit["counts"]["kept"] + 2
