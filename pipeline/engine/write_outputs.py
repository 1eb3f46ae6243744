"""The last step: kept samples into contiguous shards, rejects into files by input block.

Keys and `shard_id` name the input block a row came from (rows
[k*N, (k+1)*N), N = output.samples_per_shard), as img2dataset's do.  A block
whose rows were all rejected has no shard, so the shard files are numbered by
the *dense rank* of the blocks that kept something: the j-th such block (in
block order) becomes `shards/{j}`.  The rank comes from a side input of
per-block counts, so it depends only on which rows were kept, never on how
the runner split the work: `shards/{00000..N-1}.tar` is always contiguous, as
training code expects.  Rejects files stay numbered by input block.

Each shard also gets img2dataset's `{j}_stats.json`, counting the input rows
of the blocks it covers: its own block and the empty blocks after it (the
empty blocks before the first shard go to shard 0), so the counts of all
stats files add up to the run's input.

Every shard is written with the run's one schema (pipeline.engine.shard_schema),
decided by a global combine before any shard is written; a sample whose value
the schema cannot hold becomes a reject of stage `write`.  Embedding fields
the stages send to `.npz` (`npz_arrays`) get no column: they go to
`shards/{j}.npz` (pipeline.engine.embedding_files).
"""
from __future__ import annotations

import bisect

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.engine import shard_schema
from pipeline.engine.stored_images import ImageStore
from pipeline.core.records import Sample
from pipeline.core import layout
from pipeline.core.records import REJECTED
from pipeline.engine.writers import OutputParams, observed_types, write_json, write_rejects, write_shard

KEPT = "kept"
# The download step's reasons that img2dataset counts as failed_to_resize (its resizer decodes).
IMAGE_REASONS = frozenset(
    {"not_an_image", "decode_error", "truncated_image", "decompression_bomb", "unsupported_image", "encode_error", "output_too_large"}
)


class _Conform(beam.DoFn):
    """Samples whose every value fits the run's schema; the others as rejects naming the column."""

    def process(self, sample: Sample, schema):
        column = shard_schema.misfit(sample.metadata(), schema)
        if column is None:
            yield sample
        else:
            Metrics.counter("write", "unrepresentable").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, sample.reject("write", f"unrepresentable_{column}"))


def _per_block(counted) -> dict[int, dict[str, int]]:
    """((block, name), n) pairs -> {block: {name: n}}; name is `kept` or `STAGE/REASON`."""
    blocks: dict[int, dict[str, int]] = {}
    for (block, name), count in counted:
        blocks.setdefault(block, {})[name] = count
    return blocks


def shard_numbers(blocks: dict[int, dict[str, int]]) -> dict[int, int]:
    """Input block -> shard number: the dense rank among blocks that kept something."""
    return {block: rank for rank, block in enumerate(sorted(b for b, c in blocks.items() if c.get(KEPT)))}


def shard_plan(blocks: dict[int, dict[str, int]]) -> dict[int, tuple[int, dict]]:
    """Block that kept rows -> (its shard number, its `_stats.json`), computed once for the run.

    A shard's stats cover its own block and the empty blocks after it; the
    empty blocks before the first shard count with shard 0.
    """
    numbers = shard_numbers(blocks)
    starts = sorted(numbers)
    if not starts:
        return {}  # nothing kept: no shards, no stats
    covered: dict[int, list[int]] = {block: [] for block in starts}
    for block in sorted(blocks):
        covered[starts[max(bisect.bisect_right(starts, block) - 1, 0)]].append(block)
    return {block: (numbers[block], shard_stats(covered[block], blocks)) for block in starts}


def shard_stats(covered: list[int], blocks: dict[int, dict[str, int]]) -> dict:
    """img2dataset's `_stats.json` fields (without its timings: a re-run gives identical files)."""
    status: dict[str, int] = {}
    for b in covered:
        for name, count in blocks[b].items():
            key = "success" if name == KEPT else name
            status[key] = status.get(key, 0) + count
    downloads = {name: n for name, n in status.items() if name.startswith("download/")}
    resize = sum(n for name, n in downloads.items() if name.split("/", 1)[1] in IMAGE_REASONS)
    return {
        "count": sum(status.values()),
        "successes": status.get("success", 0),
        "failed_to_download": sum(downloads.values()) - resize,
        "failed_to_resize": resize,
        "filtered": sum(status.values()) - status.get("success", 0) - sum(downloads.values()),
        "status_dict": dict(sorted(status.items(), key=lambda item: (-item[1], item[0]))),
        "input_blocks": covered,
    }


class _WriteShard(beam.DoFn):
    def __init__(self, output: OutputParams, output_dir: str, npz_arrays: dict[str, str]):
        self._output, self._output_dir, self._npz_arrays = output, output_dir, npz_arrays
        self._written = Metrics.counter("write", "samples")

    def process(self, element, schema, plan):
        block, samples = element
        samples = list(samples)
        number, stats = plan[block]
        output, output_dir = self._output, self._output_dir
        load_images = ImageStore(output, output_dir).restore
        write_shard(output, output_dir, number, samples, load_images, schema, self._npz_arrays)
        name = layout.shard_name(number, output.shard_digits)
        write_json(layout.OutputLayout(output_dir).shard_stats(name), stats)
        self._written.inc(len(samples))
        yield {KEPT: len(samples), "shards": 1}


class _WriteRejects(beam.DoFn):
    def __init__(self, output: OutputParams, output_dir: str):
        self._output, self._output_dir = output, output_dir

    def process(self, element):
        block, rejects = element
        rejects = list(rejects)
        write_rejects(self._output, self._output_dir, block, rejects)
        counts: dict[str, int] = {}
        for reject in rejects:
            name = f"rejected/{reject.stage}/{reject.reason}"
            counts[name] = counts.get(name, 0) + 1
        yield counts


class WriteOutputs(beam.PTransform):
    """(kept samples, rejects) -> shards and rejects files; emits one count summary per file set
    ({"kept": n, "shards": 1} or {"rejected/STAGE/REASON": n}), so whatever consumes the summaries
    runs after the files exist.

    Samples are shuffled without the image bytes their checkpoint holds, and
    the writer reads those back a download task at a time (pipeline.engine.stored_images).
    """

    def __init__(self, output: OutputParams, output_dir: str, npz_arrays: dict[str, str] | None = None):
        super().__init__()
        self._output, self._output_dir, self._npz_arrays = output, output_dir, npz_arrays or {}

    def expand(self, inputs):
        samples, rejects = inputs
        output_format = self._output.format
        samples = samples | "StripImages" >> beam.Map(ImageStore.strip)
        schema = (
            samples
            | "ObserveTypes" >> beam.Map(observed_types, output_format, self._npz_arrays)
            | "MergeTypes" >> beam.CombineGlobally(shard_schema.ColumnTypes())
            | "DecideSchema" >> beam.Map(shard_schema.decide)
        )
        schema_side = beam.pvalue.AsSingleton(schema)
        fitted = samples | "Conform" >> beam.ParDo(_Conform(), schema_side).with_outputs(REJECTED, main="samples")
        all_rejects = (rejects, fitted[REJECTED]) | "AllRejects" >> beam.Flatten()
        plan = (
            (
                fitted.samples | "KeptBlock" >> beam.Map(lambda s: (s.shard_id, KEPT)),
                all_rejects | "RejectBlock" >> beam.Map(lambda r: (r.shard_id, f"{r.stage}/{r.reason}")),
            )
            | "AllBlockRows" >> beam.Flatten()
            | "CountPerBlock" >> beam.combiners.Count.PerElement()
            | "BlockCounts" >> beam.combiners.ToList()
            | "ShardPlan" >> beam.Map(lambda counted: shard_plan(_per_block(counted)))
        )
        kept = (
            fitted.samples
            | "KeySamplesByBlock" >> beam.Map(lambda s: (s.shard_id, s))
            | "GroupSamples" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(
                _WriteShard(self._output, self._output_dir, self._npz_arrays), schema_side,
                beam.pvalue.AsSingleton(plan)
            )
        )
        rejected = (
            all_rejects
            | "KeyRejectsByBlock" >> beam.Map(lambda r: (r.shard_id, r))
            | "GroupRejects" >> beam.GroupByKey()
            | "WriteRejects" >> beam.ParDo(_WriteRejects(self._output, self._output_dir))
        )
        return (kept, rejected) | "AllSummaries" >> beam.Flatten()

