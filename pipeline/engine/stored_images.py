"""Image bytes stay out of shuffles: they are read back from the download checkpoints where needed.

The design, in one place (`ImageStore`):

* put: every downloaded image is saved in its download task's checkpoint
  (`pipeline.engine.checkpoint`, `DIR/_work/<shard>-<task>.ckpt.parquet`), and
  `Sample.image_ref` names that task while the sample's image is still the
  saved one.  A stage that changes the image (face_blur) calls
  `Sample.replace_image`, which forgets the reference: the edited bytes then
  travel with the sample (assigning `sample.image` directly is refused).
* strip: before a step that shuffles samples (a whole-dataset stage such as
  a dedup join, the grouping into shards) the bytes of samples with a
  reference are dropped.
* restore: steps that need pixels again get them back, one checkpoint file
  per task: the shard writer, and a stage that looks at pixels placed after a
  whole-dataset stage (`RestoreImages`).  An image missing from the
  checkpoint it names is an error, never a silently imageless sample.

Shuffles then carry a few hundred bytes of metadata per sample instead of
its image.  That bounds the local runner's memory, which holds shuffled data
in the launching process, and cuts a Dataflow job's shuffle bytes several
fold; the price is one more read of each image from the work folder.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.engine import checkpoint
from pipeline.core.records import Sample
from pipeline.engine.writers import OutputParams


class MissingStoredImage(RuntimeError):
    """A sample's image is not in the checkpoint it names: the work folder changed during the run."""


class ImageStore:
    """The images of one run, kept in its download checkpoints (see the module doc)."""

    def __init__(self, output: OutputParams, output_dir: str):
        self.output, self.output_dir = output, output_dir

    @staticmethod
    def put(sample: Sample, task: tuple[int, int]) -> Sample:
        """Mark the sample's image as the one its download task's checkpoint saves (the task writes it)."""
        sample.image_ref = task
        return sample

    @staticmethod
    def strip(sample: Sample) -> Sample:
        """The sample without its image bytes, if they can be read back from its checkpoint."""
        if sample.image_ref is None or sample.image is None:
            return sample
        return dataclasses.replace(sample, image=None)

    @staticmethod
    def needs_restoring(sample: Sample) -> bool:
        return sample.image is None and sample.image_ref is not None

    def restore(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        """The samples with their stored images back.

        Loads one task's checkpoint at a time, so give samples grouped by task
        (sorted by key does that: a task is a run of consecutive keys).
        """
        task, saved = None, {}
        for sample in samples:
            if self.needs_restoring(sample):
                if sample.image_ref != task:
                    task = sample.image_ref
                    saved = checkpoint.load_images(self.output, self.output_dir, tuple(sample.image_ref))
                image = saved.get(sample.key)
                if image is None:
                    raise MissingStoredImage(
                        f"the image of sample {sample.key} is missing from its download checkpoint "
                        f"{checkpoint.task_path(self.output, self.output_dir, tuple(task))}; was the output folder "
                        "changed while the run went on?"
                    )
                sample.restore_image(image)
            yield sample


class StripImages(beam.PTransform):
    def expand(self, samples):
        return samples | "Strip" >> beam.Map(ImageStore.strip)


class RestoreImages(beam.PTransform):
    """Samples with their images back: stripped ones grouped by download task, one checkpoint
    read per task; the others (with their bytes, or never downloaded) pass by the shuffle."""

    def __init__(self, output: OutputParams, output_dir: str):
        super().__init__()
        self._store = ImageStore(output, output_dir)

    def expand(self, samples):
        store = self._store
        restored = Metrics.counter("restore_images", "samples")

        def restore_task(element):
            _task, group = element
            for sample in store.restore(sorted(group, key=lambda s: s.key)):
                restored.inc()
                yield sample

        stripped, whole = samples | "NeedsRestoring" >> beam.Partition(
            lambda sample, _count: 0 if ImageStore.needs_restoring(sample) else 1, 2
        )
        restored_samples = (
            stripped
            | "ByTask" >> beam.Map(lambda s: (s.image_ref, s))
            | "GroupByTask" >> beam.GroupByKey()
            | "Restore" >> beam.FlatMap(restore_task)
        )
        return (restored_samples, whole) | "All" >> beam.Flatten()
