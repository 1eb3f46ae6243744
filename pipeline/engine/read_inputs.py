"""Reading the input files into keyed samples: the first step of every run."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.core.records import REJECTED, Sample
from pipeline.engine.writers import OutputParams
from pipeline.ingest import input_files, readers
from pipeline.ingest.crawl_params import CrawlParams, Tally
from pipeline.ingest.textlines import FileTally

INPUTS = "inputs"


class ReadInputFile(beam.DoFn):
    """(file_index, path) -> (file_index, row_index, InputRow), streamed; then the file's tally to INPUTS."""

    def __init__(self, fmt: str | None, url_col: str, caption_col: str | None, crawl: CrawlParams):
        self._fmt, self._url_col, self._caption_col, self._crawl = fmt, url_col, caption_col, crawl

    def process(self, element):
        file_index, path = element
        fmt = input_files.detect_format(path, self._fmt)
        tally, crawl_tally = FileTally(), Tally()
        rows = readers.read_rows(path, fmt, self._url_col, self._caption_col, crawl_params=self._crawl,
                                 crawl_tally=crawl_tally, tally=tally)
        for row_index, row in enumerate(rows):
            yield file_index, row_index, row
        for name, count in crawl_tally.items():  # crawl files: records read, image links dropped and why
            Metrics.counter("crawl", name).inc(count)
        yield beam.pvalue.TaggedOutput(INPUTS, tally.summary(path, fmt))


def _offsets(counts: dict[int, int]) -> dict[int, int]:
    """Global position of each file's first row."""
    offsets, total = {}, 0
    for file_index in sorted(counts):
        offsets[file_index] = total
        total += counts[file_index]
    return offsets


class ReadAndKey(beam.PTransform):
    """Input files -> Samples with stable keys and shard ids, rejects of malformed rows, and each file's tally.

    The result is a dict: "samples", REJECTED, and INPUTS (one
    FileTally.summary per file, for the audit's `inputs`).

    Row n of the whole input (files in sorted order) goes to shard
    n // samples_per_shard, with key "<shard><index in shard>", so keys and
    shards depend only on the input, never on how the runner split the work.
    """

    def __init__(
        self,
        paths: list[str],
        fmt: str | None,
        url_col: str,
        caption_col: str | None,
        output: OutputParams,
        crawl: CrawlParams,
    ):
        super().__init__()
        self._paths, self._fmt, self._url_col, self._caption_col = paths, fmt, url_col, caption_col
        self._output, self._crawl = output, crawl

    def expand(self, pbegin):
        read = (
            pbegin
            | "ListFiles" >> beam.Create(list(enumerate(self._paths)))
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadRows"
            >> beam.ParDo(ReadInputFile(self._fmt, self._url_col, self._caption_col, self._crawl)).with_outputs(
                INPUTS, main="rows"
            )
        )
        rows = read.rows
        if len(self._paths) == 1:
            # One file starts at row 0: no count to wait for, so the rows go on to the download
            # in the same fused stage instead of being held until every row is read.
            offsets = {0: 0}
        else:
            offsets = beam.pvalue.AsSingleton(
                rows
                | "FileOfRow" >> beam.Map(lambda r: r[0])
                | "CountPerFile" >> beam.combiners.Count.PerElement()
                | "AllCounts" >> beam.combiners.ToDict()
                | "Offsets" >> beam.Map(_offsets)
            )
        keyed = rows | "AssignKeys" >> beam.ParDo(_ToSample(self._output), offsets).with_outputs(
            REJECTED, main="samples"
        )
        return {"samples": keyed.samples, REJECTED: keyed[REJECTED], INPUTS: read[INPUTS]}


class _ToSample(beam.DoFn):
    def __init__(self, output: OutputParams):
        self._output = output
        self._input = Metrics.counter("read", "input_rows")

    def process(self, element, offsets):
        file_index, row_index, row = element
        self._input.inc()
        shard_id, index = divmod(offsets[file_index] + row_index, self._output.samples_per_shard)
        sample = Sample(key=self._output.key(shard_id, index), shard_id=shard_id, url=row.url or "", caption=row.caption, extra=row.extra)
        if row.error:
            yield beam.pvalue.TaggedOutput(REJECTED, sample.reject("read", row.error))
        else:
            yield sample
