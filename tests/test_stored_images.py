"""Image bytes stay out of shuffles and come back from the download checkpoints where needed."""
import dataclasses
import io
import pickle
import textwrap

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from PIL import Image

from pipeline.core.stage import DatasetStage, SampleStage
from pipeline.engine import checkpoint
from pipeline.cli import main
from pipeline.demo.localweb import LocalWeb
from pipeline.core.registry import register
from pipeline.core.records import KEEP, Sample, drop
from pipeline.engine.stored_images import ImageStore, MissingStoredImage
from pipeline.engine.writers import OutputParams

OUTPUT = OutputParams(samples_per_shard=100)


def stored_sample(key: str, image: bytes, task=(0, 0)) -> Sample:
    sample = Sample(key=key, shard_id=0, url=f"http://x/{key}", image=image, image_format="jpg")
    sample.image_ref = task
    return sample


def test_a_new_image_forgets_the_stored_one_and_a_restored_one_does_not():
    sample = stored_sample("00000000", b"saved")
    assert dataclasses.replace(sample, image=None).image_ref == (0, 0)
    assert pickle.loads(pickle.dumps(sample)).image_ref == (0, 0)
    stripped = ImageStore.strip(sample)
    stripped.restore_image(b"saved")
    assert stripped.image_ref == (0, 0)
    sample.replace_image(b"blurred")  # a stage edited the pixels: the checkpoint no longer has them
    assert sample.image_ref is None
    assert ImageStore.strip(sample).image == b"blurred"


def test_assigning_a_stored_image_is_refused_so_an_edit_cannot_be_lost_in_a_shuffle():
    sample = stored_sample("00000000", b"saved")
    with pytest.raises(AttributeError, match="replace_image"):
        sample.image = b"blurred"
    assert (sample.image, sample.image_ref) == (b"saved", (0, 0))
    fresh = Sample(key="00000001", shard_id=0, url="u", image=b"a")
    fresh.image = b"b"  # not a stored image: nothing to lose
    assert fresh.image == b"b"


def test_strip_then_restore_gives_the_saved_bytes_back(tmp_path):
    out = str(tmp_path)
    saved = [stored_sample(OUTPUT.key(0, i), f"image {i}".encode()) for i in range(3)]
    with checkpoint.TaskCheckpoint(OUTPUT, out, (0, 0)) as task:
        for sample in saved:
            task.add(sample)
    unsaved = Sample(key=OUTPUT.key(0, 5), shard_id=0, url="u", image=b"edited")
    stripped = [ImageStore.strip(s) for s in saved] + [unsaved]
    assert [s.image for s in stripped] == [None, None, None, b"edited"]
    restored = list(ImageStore(OUTPUT, out).restore(stripped))
    assert [s.image for s in restored] == [b"image 0", b"image 1", b"image 2", b"edited"]


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    lost = ImageStore.strip(stored_sample(OUTPUT.key(0, 1), b"bytes", task=(0, 7)))
    with pytest.raises(MissingStoredImage, match=f"{OUTPUT.key(0, 1)} .*00000-00007.ckpt.parquet"):
        list(ImageStore(OUTPUT, str(tmp_path)).restore([lost]))


# ---------------------------------------------------------------- in a pipeline

PROBE = "stored_images_probe"


def _count_bytes(sample: Sample, where: str) -> Sample:
    name = "with_bytes" if sample.image else "without_bytes"
    beam.metrics.Metrics.counter(PROBE, f"{where}:{name}").inc()
    return sample


@register
class DatasetProbe(DatasetStage):
    """A whole-dataset stage that shuffles its input and counts the image bytes it sees."""

    name = "probe_dataset_bytes"

    def transform(self):
        class _Shuffle(beam.PTransform):
            def expand(self, samples):
                kept = (
                    samples
                    | beam.Map(lambda s: (s.key, s))
                    | beam.GroupByKey()
                    | beam.FlatMap(lambda kv: kv[1])
                    | beam.Map(_count_bytes, "dataset")
                )
                return {"kept": kept, "rejected": samples.pipeline | beam.Create([])}

        return _Shuffle()


@register
class PixelProbe(SampleStage):
    """A stage that reads pixels, placed after the whole-dataset stage."""

    name = "probe_pixels"

    def keep(self, sample):
        _count_bytes(sample, "pixels")
        with Image.open(io.BytesIO(sample.image)) as image:
            return KEEP if image.size == (64, 64) else drop("wrong_pixels")


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    for i, colour in enumerate(["red", "green", "blue", "white", "black"]):
        buffer = io.BytesIO()
        Image.new("RGB", (80 + i, 60), colour).save(buffer, "PNG")
        (root / f"{i}.png").write_bytes(buffer.getvalue())
    with LocalWeb(root) as server:
        yield server


def test_a_whole_dataset_stage_sees_no_image_bytes_and_a_later_pixel_stage_gets_them_back(web, tmp_path, monkeypatch):
    recipe = tmp_path / "probe.yaml"
    recipe.write_text(textwrap.dedent("""\
        resize: {image_size: 64, resize_mode: border}
        output: {samples_per_shard: 3}
        download: {rows_per_task: 2}
        stages:
          - resolution: {min_side: 8}
          - probe_dataset_bytes
          - probe_pixels
        """))
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(web.url(f"{i}.png") + "\n" for i in range(5)))
    results = []
    from pipeline.engine import run as run_module

    real_run = run_module.run
    monkeypatch.setattr(run_module, "run", lambda *a, **k: results.append(real_run(*a, **k)) or results[-1])
    out = tmp_path / "out"
    assert main(["run", "--recipe", str(recipe), "--input", str(urls), "--output", str(out),
                 "--allow-private-network", "--direct_num_workers=1"]) == 0

    counters = {
        r.key.metric.name: r.committed for r in results[0].metrics().query(MetricsFilter().with_namespace(PROBE))["counters"]
    }
    assert counters == {"dataset:without_bytes": 5, "pixels:with_bytes": 5}
    import webdataset as wds

    written = list(wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False))
    assert len(written) == 5
    assert all(Image.open(io.BytesIO(s["png"] if "png" in s else s["jpg"])).size == (64, 64) for s in written)


def test_only_stripped_samples_go_through_the_restoring_shuffle(tmp_path):
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.engine.stored_images import RestoreImages

    out = str(tmp_path)
    saved = [stored_sample(OUTPUT.key(0, i), f"image {i}".encode()) for i in range(2)]
    with checkpoint.TaskCheckpoint(OUTPUT, out, (0, 0)) as task:
        for sample in saved:
            task.add(sample)
    edited = stored_sample(OUTPUT.key(0, 2), b"old")
    edited.replace_image(b"blurred")  # no longer the stored image
    never_downloaded = Sample(key=OUTPUT.key(0, 3), shard_id=0, url="u")
    inputs = [ImageStore.strip(s) for s in saved] + [edited, never_downloaded]

    pipeline = beam.Pipeline(runner=FnApiRunner())
    images = (
        pipeline
        | beam.Create(inputs)
        | RestoreImages(OUTPUT, out)
        | beam.Map(lambda s: (s.key, s.image))
    )
    assert_that(images, equal_to([
        (OUTPUT.key(0, 0), b"image 0"), (OUTPUT.key(0, 1), b"image 1"),
        (OUTPUT.key(0, 2), b"blurred"), (OUTPUT.key(0, 3), None),
    ]))
    result = pipeline.run()
    result.wait_until_finish()
    (counter,) = result.metrics().query(MetricsFilter().with_name("samples"))["counters"]
    assert counter.committed == 2  # the two stripped samples; the others bypassed the grouping


def test_no_image_shuffle_steps_before_the_download(tmp_path):
    """A whole-dataset stage that runs before the download has no bytes to strip, so a later
    pixel stage has none to restore."""
    from pipeline.engine.recipe import load_recipe
    from pipeline.engine.run import InputSpec, build_pipeline

    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - dedup_caption\n  - probe_pixels\n")
    pipeline = beam.Pipeline()
    build_pipeline(pipeline, load_recipe(recipe), InputSpec((str(tmp_path / "urls.txt"),)), str(tmp_path / "o"))
    labels = {t.unique_name.split("/")[0] for t in pipeline.to_runner_api().components.transforms.values()}
    assert "Download" in labels
    assert not [label for label in labels if "Images[" in label]
