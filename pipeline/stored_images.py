"""Image bytes stay out of shuffles: they are read back from the download checkpoints where needed.

Every downloaded image is already saved in its download task's checkpoint
(`pipeline.checkpoint`), and `Sample.image_ref` names that task while the
sample's image is still the saved one.  So before a step that shuffles
samples (a dedup join, the grouping into shards), `strip` drops those bytes,
and steps that need pixels again get them back with `restore`, one
checkpoint file per task: the shard writer, and a stage that looks at pixels
placed after a whole-dataset stage.

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

from pipeline import checkpoint
from pipeline.schema import Sample
from pipeline.writers import OutputParams


class MissingStoredImage(RuntimeError):
    """A sample's image is not in the checkpoint it names: the work folder changed during the run."""


def strip(sample: Sample) -> Sample:
    """The sample without its image bytes, if they can be read back from its checkpoint."""
    if sample.image_ref is None or sample.image is None:
        return sample
    return dataclasses.replace(sample, image=None)


def needs_restoring(sample: Sample) -> bool:
    return sample.image is None and sample.image_ref is not None


def restore(samples: Iterable[Sample], output: OutputParams, output_dir: str) -> Iterator[Sample]:
    """The samples with their saved images back.

    Loads one task's checkpoint at a time, so give samples grouped by task
    (sorted by key does that: a task is a run of consecutive keys).
    """
    task, saved = None, {}
    for sample in samples:
        if needs_restoring(sample):
            if sample.image_ref != task:
                task, saved = sample.image_ref, checkpoint.load_images(output, output_dir, tuple(sample.image_ref))
            image = saved.get(sample.key)
            if image is None:
                raise MissingStoredImage(
                    f"the image of sample {sample.key} is missing from its download checkpoint "
                    f"{checkpoint.task_path(output, output_dir, tuple(task))}; was the output folder "
                    "changed while the run went on?"
                )
            sample.restore_image(image)
        yield sample


class StripImages(beam.PTransform):
    def expand(self, samples):
        return samples | "Strip" >> beam.Map(strip)


class RestoreImages(beam.PTransform):
    """Samples with their images back: stripped ones grouped by download task, one checkpoint
    read per task; the others (with their bytes, or never downloaded) pass by the shuffle."""

    def __init__(self, output: OutputParams, output_dir: str):
        super().__init__()
        self._output, self._output_dir = output, output_dir

    def expand(self, samples):
        output, output_dir = self._output, self._output_dir
        restored = Metrics.counter("restore_images", "samples")

        def restore_task(element):
            _task, group = element
            for sample in restore(sorted(group, key=lambda s: s.key), output, output_dir):
                restored.inc()
                yield sample

        stripped, whole = samples | "NeedsRestoring" >> beam.Partition(
            lambda sample, _count: 0 if needs_restoring(sample) else 1, 2
        )
        restored_samples = (
            stripped
            | "ByTask" >> beam.Map(lambda s: (s.image_ref, s))
            | "GroupByTask" >> beam.GroupByKey()
            | "Restore" >> beam.FlatMap(restore_task)
        )
        return (restored_samples, whole) | "All" >> beam.Flatten()
