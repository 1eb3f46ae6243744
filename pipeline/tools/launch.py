"""One job, prepared and run the same way for `curate run`, `curate demo` and library users.

    from pipeline.tools.launch import run_job
    result = run_job("local-sample", ["urls.parquet"], "out/", ["--direct_num_workers=2"])
    print(result.audit["counts"])

`run_job` is the whole of `curate run`: resolve the recipe and inputs, run
the stages' pre-flight checks, refuse an output folder inside an input glob,
then (holding the folder's lock) claim the folder (`pipeline.engine.output_folder`),
check or start the download checkpoints (`pipeline.engine.checkpoint`), write
recipe.json, run the Beam pipeline (`pipeline.engine.run`) and finalise: drop the
checkpoints and write the HTML/JSON reports.  Problems the user can fix raise
`JobError` (pipeline.core.errors) with a message meant to be printed as it is.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions, TestOptions

from pipeline.core import layout
from pipeline.engine import audit, checkpoint, embedding_files, output_folder, runners
from pipeline.engine import run as run_module
from pipeline.core.errors import JobError
from pipeline.engine.recipe import Recipe
from pipeline.engine.run import LOCAL_RUNNER_NAMES, InputSpec, RunOptions

# Files a run writes, to tell whether an input glob would read them back.
_OUTPUT_PROBES = (layout.RECIPE, layout.shard_file("00000", "parquet"), layout.shard_file("00000", "tar"),
                  layout.rejects_file("00000"), layout.AUDIT, layout.WORK_MANIFEST, layout.MARKER)


@dataclass
class JobResult:
    output_dir: str
    audit: dict[str, Any] | None = None  # None for a dry run
    reports: list[str] = field(default_factory=list)  # HTML/JSON report paths, if they could be written


def run_job(
    recipe: Recipe | str,
    inputs: InputSpec | Iterable[str],
    output: str,
    beam_args: Iterable[str] = (),
    *,
    overwrite: bool = False,
    save_pipeline: str | None = None,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> JobResult:
    """Run one job as `curate run` does; `recipe` a Recipe or a file/bundled name, `inputs` an InputSpec or
    files/folders/globs, `beam_args` Beam pipeline options."""
    inputs = inputs if isinstance(inputs, InputSpec) else resolve_inputs(list(inputs))
    # --engine spelled out, and a Flink/Spark run without its jar refused, before the output folder is touched.
    beam_args = list(beam_args)
    # Files are opened to count rows only when the count decides something, and no further than needed.
    rows = None if chose_processes(beam_args) else estimated_rows(inputs, enough=SMALL_INPUT_ROWS + 1)
    args = default_beam_args(beam_args, rows)
    options = runners.expand(RunOptions(args))
    recipe = recipe if isinstance(recipe, Recipe) else load_job_recipe(recipe)
    recipe = with_fetcher_chosen(recipe, in_process=run_module.runs_in_this_process(options))
    check_stages(recipe, options.view_as(StandardOptions).runner in LOCAL_RUNNER_NAMES)
    output_dir = absolute(output).rstrip("/")
    check_output_outside_inputs(output_dir, inputs)
    say(f"curate: recipe {recipe.name} ({len(recipe.stages)} stages), {len(inputs.paths)} input file(s) -> {output_dir}")
    if IN_PROCESS_ARGS[-1] in args and IN_PROCESS_ARGS[-1] not in beam_args:
        say("curate: small input: the rows run in this process (--direct_num_workers=N for worker processes)")
    if options.view_as(TestOptions).dry_run:
        # Builds (and for Dataflow, submits for validation) the job graph only: nothing to prepare or read back.
        _execute(recipe, inputs, output_dir, options, save_pipeline)
        return JobResult(output_dir)
    output_folder.check_claim(output_dir, overwrite)  # refused here, before the lock, nothing is written
    with output_folder.OutputLock(output_dir):
        # Started now, the workers' imports overlap preparing the folder and building the graph.
        with run_module.worker_fork_server(options):
            prepare_output(output_dir, overwrite, recipe, inputs, say)
            _execute(recipe, inputs, output_dir, options, save_pipeline, progress)
        return finalize(output_dir)


# Inputs of at most this many rows run in the launcher's process when the user chose no workers.  Two
# worker processes cost ~6 s of start-up on 2 cores (each imports Beam; the rows go to them and back
# over gRPC), and one process, its download threads decoding outside the GIL, is faster up to ~2,700
# rows there (benchmarks/README.md, "Start-up"); with more cores the crossover comes sooner.
SMALL_INPUT_ROWS = 1000
IN_PROCESS_ARGS = ("--direct_num_workers=1", "--direct_running_mode=in_memory")
_TEXT_BYTES_PER_ROW = 64  # a URL and a short caption: longer rows make the estimate larger, never smaller
_COMPRESSION_RATIO = 4  # a gzip'd URL list


def default_beam_args(beam_args: list[str], input_rows: int | None = None) -> list[str]:
    """One worker process per core for the local runner, unless the user chose; none (the rows run in
    this process) for a small input (`input_rows`, an estimate, at most SMALL_INPUT_ROWS)."""
    given = " ".join(beam_args)
    extra = []
    if not chose_processes(beam_args):
        if input_rows is not None and input_rows <= SMALL_INPUT_ROWS:
            extra = list(IN_PROCESS_ARGS)
        else:
            extra = [f"--direct_num_workers={os.cpu_count() or 1}", "--direct_running_mode=multi_processing"]
    if "--default_sdk_harness_log_level" not in given:
        extra.append("--default_sdk_harness_log_level=WARNING")  # worker start-up chatter hides the summary
    return [*beam_args, *extra]


def with_fetcher_chosen(recipe: Recipe, in_process: bool) -> Recipe:
    """`recipe` with its `download.fetcher` "auto" resolved for this run (saved so in recipe.json)."""
    download = recipe.download
    chosen = download.chosen_fetcher(in_process)
    if chosen == download.fetcher:
        return recipe
    sections = {**recipe.sections, "download": dataclasses.replace(download, fetcher=chosen)}
    return dataclasses.replace(recipe, sections=sections)


def chose_processes(beam_args: list[str]) -> bool:
    """Whether the Beam options already say where the rows run (a runner, or the local runner's workers)."""
    given = " ".join(beam_args)
    return any(option in given for option in ("--runner", "--direct_num_workers", "--direct_running_mode"))


def estimated_rows(inputs: InputSpec, enough: int | None = None) -> int | None:
    """About how many rows the inputs hold (Parquet's own count; text by size), or None if unknown;
    it stops reading files once the count reaches `enough`."""
    from pipeline.ingest import input_files

    total = 0
    try:
        for path in inputs.paths:
            if enough is not None and total >= enough:
                break
            fmt = input_files.detect_format(path, inputs.format)
            if fmt in ("warc", "wat"):
                return None  # pages, not rows: as many images as they link
            if fmt == "parquet":
                with FileSystems.open(path) as handle:
                    total += pq.ParquetFile(handle).metadata.num_rows
                continue
            size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
            compressed = path.lower().endswith(input_files.COMPRESSION_SUFFIXES)
            total += size * (_COMPRESSION_RATIO if compressed else 1) // _TEXT_BYTES_PER_ROW
    except (OSError, IndexError, ValueError, pa.ArrowException):  # unreadable here: the run reports it
        return None
    return total


def load_job_recipe(recipe: str, overrides: Iterable[str] = (), allow_private_network: bool = False) -> Recipe:
    from pipeline.engine.recipe import RecipeError, load_recipe

    try:
        loaded = load_recipe(recipe, list(overrides))
    except RecipeError as err:
        raise JobError(str(err)) from None
    return run_module.with_private_network(loaded) if allow_private_network else loaded


def check_stages(recipe: Recipe, local: bool) -> None:
    """Stages' own pre-flight checks (e.g. model weights exist), before any work.

    On a remote runner the workers may see files this machine does not (models
    baked into the worker image), so a failed check is only a warning there.
    """
    stages = recipe.build_stages()
    for stage in stages:
        try:
            stage.check()
        except (ValueError, FileNotFoundError, ImportError) as err:
            if local:
                raise JobError(f"stage '{stage.name}': {err}") from None
            logging.warning("stage '%s': %s (not checked further: the workers may see other files)", stage.name, err)
    try:
        embedding_files.npz_arrays_of(stages)  # two stages writing one .npz array
    except embedding_files.EmbeddingArraysError as err:
        raise JobError(str(err)) from None


def resolve_inputs(
    patterns: list[str], input_format: str | None = None, url_col: str = "url", caption_col: str | None = "caption"
) -> InputSpec:
    """The input files of files/folders/globs, each checked to be readable with these columns."""
    from pipeline.ingest import input_files, readers

    patterns = [absolute(pattern) for pattern in patterns]
    try:
        paths = sorted({path for pattern in patterns for path in input_files.expand_inputs(pattern)})
        for path in paths:
            readers.check_input(path, input_files.detect_format(path, input_format), url_col, caption_col)
    except input_files.InputError as err:
        raise JobError(str(err)) from None
    return InputSpec(tuple(paths), input_format, url_col, caption_col, patterns=tuple(patterns))


def check_output_outside_inputs(output_dir: str, inputs: InputSpec) -> None:
    """A run must not read its own (or a previous run's) output as input."""
    inside = [path for path in inputs.paths if path.startswith(f"{output_dir}/")]
    for pattern in inputs.patterns or inputs.paths:
        probes = [layout.OutputLayout(output_dir).path(name) for name in _OUTPUT_PROBES]
        if pattern.rstrip("/") == output_dir or any(_glob_matches(pattern, probe) for probe in probes):
            inside.append(pattern)
    if inside:
        raise JobError(
            f"the output folder {output_dir} is inside the input {inside[0]}: a run would read its own "
            "shards, rejects and recipe.json back as input rows; choose an output folder outside the inputs"
        )


def _glob_matches(pattern: str, path: str) -> bool:
    globbed = any(char in pattern for char in "*?[")
    return globbed and re.match(FileSystem.translate_pattern(pattern), path) is not None


def absolute(path: str) -> str:
    """Local paths made absolute: worker processes of other runners have other working folders."""
    return os.path.abspath(path) if FileSystems.get_scheme(path) is None else path


def prepare_output(output_dir: str, overwrite: bool, recipe: Recipe, inputs: InputSpec, say=print) -> None:
    """Claim the folder, check or start its download checkpoints, and write recipe.json."""
    files = output_folder.check_claim(output_dir, overwrite)
    # Download results depend on these only: other stages may change between a run and its resume.
    depends_on = {name: dataclasses.asdict(recipe.sections[name]) for name in ("download", "resize", "crawl")}
    depends_on["samples_per_shard"] = recipe.output.samples_per_shard
    spec = {name: value for name, value in dataclasses.asdict(inputs).items() if name != "patterns"}
    manifest = checkpoint.fingerprint(depends_on, list(inputs.paths), spec)
    try:
        if not overwrite:
            checkpoint.check_resumable(output_dir, manifest)  # refused before anything is removed
        output_folder.claim(output_dir, files, overwrite, say)
        resumable = checkpoint.prepare(output_dir, manifest)
    except checkpoint.ResumeError as err:
        raise JobError(str(err)) from None
    if resumable:
        say(f"curate: resuming: downloads of {resumable} finished task(s) are reused from {output_dir}/{layout.WORK}")
    audit.write_json(layout.OutputLayout(output_dir).recipe, recipe.to_dict())


def _execute(recipe, inputs, output_dir: str, options, save_pipeline: str | None, progress: bool = False) -> None:
    reporter = checkpoint.ProgressReporter(output_dir, recipe.download.rows_per_task) if progress else nullcontext()
    try:
        with reporter:
            run_module.run(recipe, inputs, output_dir, options, save_pipeline)
    except Exception as err:  # the runner's traceback is in the log above
        log = run_module.worker_log_path()
        logs = f" (local worker output: {log})" if log.exists() else ""
        raise JobError(f"the run failed, no _SUCCESS written (run again to resume): {root_cause(err)}{logs}") from None


def finalize(output_dir: str) -> JobResult:
    """After _SUCCESS: drop the checkpoints and write the reports (the run is complete whatever happens there)."""
    from pipeline.tools.report_build import write_reports

    checkpoint.remove(output_dir)
    result = JobResult(output_dir, audit.read_audit(output_dir))
    try:
        result.reports = write_reports(output_dir)
    except Exception as err:
        logging.warning("the run succeeded but its report could not be written (try `curate report %s`): %s",
                        output_dir, root_cause(err))
    return result


def root_cause(err: BaseException) -> str:
    """The error that says what went wrong: our own if there is one, else the innermost."""
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    ours = [e for e in chain if type(e).__module__.split(".")[0] in ("pipeline", "filters")]
    err = ours[0] if ours else chain[-1]
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def print_summary(result) -> None:
    """The summary table and where things are, or that a dry run ran nothing."""
    if result.audit is None:
        print("curate: dry run: the job graph was built; nothing ran")
        return
    print(audit.summary_table(result.audit))
    paths = layout.OutputLayout(result.output_dir)
    print(f"shards:  {paths.shards}/\nrejects: {paths.rejects}/")
    if result.reports:
        print("report:  " + "  ".join(result.reports))
