"""Builds the curation pipeline from a recipe and runs it.

The local runner is Beam's FnApiRunner, named explicitly: Beam 2.77's
DirectRunner first tries to download the Prism runner binary from the
internet, which stalls a run on a closed network.  `--engine flink-local` or
`spark-local` is spelled out by pipeline.engine.runners; any other `--runner` goes to
Beam unchanged, Flink and Spark only with a local job-server jar.
"""
from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.core.stage import DatasetStage
from pipeline.engine import audit, beam_signatures, embedding_files, malloc, runners, worker_forkserver
from pipeline.engine.recipe import Recipe
from pipeline.engine.stored_images import RestoreImages, StripImages
from pipeline.core.records import REJECTED
from pipeline.engine.apply_stage import ApplyStage
from pipeline.engine.read_inputs import INPUTS, ReadAndKey
from pipeline.engine.download_images import DownloadImages
from pipeline.engine.write_outputs import WriteOutputs

# Here, not in run(): local workers import this module before their first bundle, and build operations too.
beam_signatures.install()

LOCAL_RUNNER_NAMES = (None, "DirectRunner", "FnApiRunner", "SwitchingDirectRunner")
WORKER_LOG_DIR = worker_forkserver.WORKER_LOG_DIR
worker_log_path = worker_forkserver.worker_log_path


@dataclass(frozen=True)
class InputSpec:
    paths: tuple[str, ...]
    format: str | None = None  # None: by file extension
    url_col: str = "url"
    caption_col: str | None = "caption"
    patterns: tuple[str, ...] = ()  # the files, folders or globs given, which `paths` expand


class RunOptions(PipelineOptions):
    """Beam's PipelineOptions, with one view per options class instead of one per call.

    Beam asks `view_as` about four times per transform it applies, and each
    call builds a new view by parsing the flags with a parser of every
    registered option (about a thousand with the gcp extra): 0.6 ms a call,
    0.5 s of building a 250-transform graph.  Views keep their values in the
    options' shared `_all_options`, so one view per class holds the same state.
    """

    def view_as(self, cls):
        views = self.__dict__.setdefault("_views", {})  # not setattr: PipelineOptions admits only option names
        if cls not in views:
            views[cls] = super().view_as(cls)
        return views[cls]


def build_pipeline(pipeline: beam.Pipeline, recipe: Recipe, inputs: InputSpec, output_dir: str) -> None:
    read = pipeline | "Read" >> ReadAndKey(
        list(inputs.paths), inputs.format, inputs.url_col, inputs.caption_col, recipe.output, recipe.crawl
    )
    input_rows = (
        (read["samples"], read[REJECTED])
        | "AllInputRows" >> beam.Flatten()
        | "CountInput" >> beam.combiners.Count.Globally()
    )
    flow = _Flow(recipe, output_dir, read["samples"], read[REJECTED])
    for stage in flow.stages:
        if stage.needs().image and not flow.downloaded:
            flow.download()
        flow.apply(stage)
    if not flow.downloaded:
        flow.download()
    _write_and_finalize(pipeline, recipe, output_dir, flow, input_rows, read[INPUTS])


class _Flow:
    """The samples and rejects so far, as steps are added in the order they run."""

    def __init__(self, recipe: Recipe, output_dir: str, samples, rejects):
        self.recipe, self.output_dir = recipe, output_dir
        self.stages = recipe.build_stages()
        self.samples, self.rejects, self.reports = samples, [rejects], []
        self.order = ["read"]  # for the audit's funnel
        self.downloaded = False
        self.images_stripped = False

    def apply(self, stage) -> None:
        if isinstance(stage, DatasetStage):
            self._strip_images(stage.name)
        elif stage.needs().image and stage.needs().pixels:
            self._restore_images(stage.name)
        result = self.samples | f"Stage[{stage.name}]" >> ApplyStage(stage, self.recipe.stage_context())
        self._advance(result["samples"], result[REJECTED], stage.name)
        if "report" in result:
            self.reports.append(result["report"])

    def _strip_images(self, before: str) -> None:
        """Whole-dataset stages shuffle samples: without their image bytes (pipeline.engine.stored_images)."""
        if self.downloaded and not self.images_stripped:
            self.samples = self.samples | f"StripImages[{before}]" >> StripImages()
            self.images_stripped = True

    def _restore_images(self, before: str) -> None:
        if self.images_stripped:
            restore = RestoreImages(self.recipe.output, self.output_dir)
            self.samples = self.samples | f"RestoreImages[{before}]" >> restore
            self.images_stripped = False

    def download(self) -> None:
        """The download, with the hooks of stages that act in its threads (opt-out signals, image hashes)."""
        download = DownloadImages(
            self.recipe.download, self.recipe.resize, self.stages, self.recipe.output, self.output_dir
        )
        result = self.samples | "Download" >> download
        self._advance(result["samples"], result[REJECTED], "download")
        self.reports.append(result["report"])  # the per-host table (audit.json: download.hosts)
        self.downloaded = True

    def _advance(self, samples, rejects, step: str | None = None) -> None:
        self.samples = samples
        self.rejects.append(rejects)
        if step:
            self.order.append(step)


def _write_and_finalize(pipeline, recipe: Recipe, output_dir: str, flow: _Flow, input_rows, input_files) -> None:
    rejects = flow.rejects | "AllRejects" >> beam.Flatten()
    npz_arrays = embedding_files.npz_arrays_of(flow.stages)
    summaries = (flow.samples, rejects) | "Write" >> WriteOutputs(recipe.output, output_dir, npz_arrays)
    stage_reports = flow.reports | "AllStageReports" >> beam.Flatten(pipeline=pipeline)
    _ = (
        summaries
        | "MergeCounts" >> beam.CombineGlobally(audit.merge_counts)
        | "Finalize"
        >> beam.Map(
            audit.finalize,
            beam.pvalue.AsSingleton(input_rows),
            beam.pvalue.AsList(stage_reports),
            flow.order,
            recipe.to_dict(),
            output_dir,
            inputs=beam.pvalue.AsList(input_files),
        )
    )


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    options = runners.expand(options)  # --engine flink-local/spark-local; never a jar download
    runner = options.view_as(StandardOptions).runner
    if runner in LOCAL_RUNNER_NAMES:
        return beam.Pipeline(runner=_local_runner(options), options=options)
    return beam.Pipeline(options=options)


def _local_runner(options: PipelineOptions):
    """FnApiRunner; with worker processes whose start-up chatter goes to a log file.

    Beam's multi_processing workers log at INFO to the terminal, drowning the
    run's own output; their warnings and errors still reach this process
    through Beam's logging service.
    """
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return FnApiRunner()
    log_path = worker_log_path()
    WORKER_LOG_DIR.mkdir(parents=True, exist_ok=True)
    worker = worker_forkserver.worker_command(f"{shlex.quote(sys.executable)} -m {worker_forkserver.WORKER_MODULE}")
    command = f"{malloc.worker_command_prefix()}{worker} 2>>{shlex.quote(str(log_path))}"
    # The runner would replace our environment in multi_processing mode; the
    # environment alone gives the worker processes.
    direct.direct_running_mode = "in_memory"
    logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner").addFilter(
        lambda record: "direct_running_mode" not in record.getMessage()
    )
    return FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(command))


def uses_worker_processes(options: PipelineOptions) -> bool:
    """Whether the run starts local worker processes (the local runner in multi_processing mode)."""
    return _local_running_mode(options) == "multi_processing"


def runs_in_this_process(options: PipelineOptions) -> bool:
    """Whether the rows run in the launcher's own process (the local runner, in memory)."""
    return _local_running_mode(options) == "in_memory"


def _local_running_mode(options: PipelineOptions) -> str | None:
    """The local runner's `direct_running_mode`; None for other runners."""
    from apache_beam.options.pipeline_options import DirectOptions

    if options.view_as(StandardOptions).runner not in LOCAL_RUNNER_NAMES:
        return None
    return options.view_as(DirectOptions).direct_running_mode


def worker_fork_server(options: PipelineOptions):
    """A context giving the run's local workers a fork server that has already imported them
    (pipeline.engine.worker_forkserver); does nothing for other runs."""
    return worker_forkserver.serving(uses_worker_processes(options))


def run(recipe: Recipe, inputs: InputSpec, output_dir: str, options: PipelineOptions, save_pipeline: str | None = None):
    """The Beam pipeline alone, into a folder already prepared: `pipeline.tools.launch.run_job` runs the whole
    job `curate run` runs (output folder, checkpoints, recipe.json, reports) and calls this."""
    pipeline = make_pipeline(options)
    build_pipeline(pipeline, recipe, inputs, output_dir.rstrip("/"))
    result = pipeline.run()
    if save_pipeline:
        _save_pipeline(pipeline, result, save_pipeline)
    result.wait_until_finish()
    worker_log_path().unlink(missing_ok=True)  # kept only when a run fails, for its traceback
    return result


def _save_pipeline(pipeline: beam.Pipeline, result, path: str) -> None:
    """The graph the runner received (Dataflow's, after its own preprocessing, when there is one)."""
    from google.protobuf import json_format

    proto = getattr(getattr(result, "job", None), "proto_pipeline", None) or pipeline.to_runner_api()
    with open(path, "w") as handle:
        handle.write(json_format.MessageToJson(proto))


def with_private_network(recipe: Recipe) -> Recipe:
    download = dataclasses.replace(recipe.download, allow_private_network=True)
    return dataclasses.replace(recipe, sections={**recipe.sections, "download": download})
