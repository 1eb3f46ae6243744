"""`curate`: the command line.

    curate run --recipe manifests/local-sample.yaml --input urls.parquet --output out/
    curate stages            # every registered stage and its parameters
    curate demo --output DIR # the bundled sample, end to end, on a loopback server
    curate report DIR        # regenerate report/audit.json, optout.json and audit.html
    curate takedown ...      # remove opted-out samples from a built dataset

Options `curate run` does not know are Beam pipeline options (`--runner`,
`--direct_num_workers`, `--project`, ...), passed through unchanged.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from pipeline import __version__, malloc
from pipeline.readers import FORMATS

EPILOG_RUN = """\
Beam options: anything not listed above goes to Beam's PipelineOptions, e.g.
  --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
  --direct_num_workers=2 --direct_running_mode=multi_processing
The default runner is Beam's in-process FnApiRunner (never the Prism binary,
which Beam would try to download), with one worker process per core.

Output (DIR):
  shards/00000.tar + shards/00000.parquet   WebDataset shard + its metadata
  rejects/00000.parquet                     every dropped row: stage, reason, scores
  report/audit.json                         counts: input = kept + rejected, score distributions
  report/audit.html                         the same as one self-contained page with plots
  report/optout.json                        opt-out drops by rule and by domain
  recipe.json                               the resolved recipe of this run
  _SUCCESS                                  written last, when all of the above is complete

A run that stops (killed, failed) resumes when started again with the same
--output: downloads already finished (DIR/_work/) are reused row by row.
"""


def main(argv: list[str] | None = None) -> int:
    malloc.limit_arenas()  # first, before any thread starts
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_known_noise)
    if args.command is None:
        parser.print_help()
        return 2
    if beam_args and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    try:
        return args.handler(args, beam_args)
    except UserError as err:
        print(f"curate: error: {err}", file=sys.stderr)
        return 2


# Harmless messages Beam prints on every local run.
_NOISE = ("apitools not found", "semi_persistent_directory")


def _drop_known_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(noise in message for noise in _NOISE)


class UserError(Exception):
    """A problem with the user's input, recipe or output folder: printed, not traced."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate",
        description="Build image-text training datasets: read URL lists, download politely, "
        "filter and deduplicate, write WebDataset/Parquet shards with a rejects table and an audit.",
    )
    parser.add_argument("--version", action="version", version=f"curate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a recipe over URL lists",
        description="Run a recipe: read, download, filter, dedup and write shards.",
        epilog=EPILOG_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--recipe", required=True,
        help="YAML recipe file, e.g. manifests/laion-style.yaml, or the bare name of a recipe bundled with "
        "curate, e.g. laion-style (used when no such file exists; an unknown name lists them)",
    )
    run.add_argument(
        "--input", required=True, action="append",
        help="input file, folder or glob (local or any Beam filesystem, e.g. gs://); repeatable",
    )
    run.add_argument("--output", required=True, help="output folder (local or e.g. gs://bucket/path)")
    run.add_argument("--url-col", default="url", help="column holding the image URL (default: url)")
    run.add_argument(
        "--caption-col", default="caption",
        help="column holding the caption (default: caption; 'none' for no captions)",
    )
    run.add_argument(
        "--input-format", choices=FORMATS,
        help="input format (default: from the file extension)",
    )
    run.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="STAGE.PARAM=VALUE",
        help="override one recipe parameter, typed by its schema (also SECTION.PARAM, e.g. download.timeout=5); repeatable",
    )
    run.add_argument(
        "--allow-private-network", action="store_true",
        help="allow downloads from loopback/private/link-local addresses (off by default: SSRF guard)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing output folder's results")
    run.add_argument(
        "--save-pipeline", metavar="FILE",
        help="write the job's pipeline graph (Beam's portable proto, as JSON) to FILE; with --dry_run=True "
        "this builds a Dataflow job offline without running it",
    )
    run.set_defaults(handler=_cmd_run)

    stages = commands.add_parser("stages", help="list the registered stages and their parameters")
    stages.set_defaults(handler=_cmd_stages)

    demo = commands.add_parser(
        "demo",
        help="run the bundled sample end to end on a loopback web server",
        description="Generate the bundled sample web (images, captions, broken links, duplicates), "
        "serve it on 127.0.0.1, and run a recipe over it.",
    )
    demo.add_argument("--output", default="demo-output", help="output folder (default: demo-output)")
    demo.add_argument(
        "--recipe", default=None,
        help="YAML recipe file or bundled recipe name, as for `curate run` (default: local-sample, "
        "the bundled manifests/local-sample.yaml)",
    )
    demo.set_defaults(handler=_cmd_demo)

    from pipeline.report import add_report_command
    from pipeline.takedown import add_takedown_command

    add_report_command(commands)
    add_takedown_command(commands)
    return parser


def _cmd_run(args, beam_args: list[str]) -> int:
    from apache_beam.options.pipeline_options import StandardOptions, TestOptions

    from pipeline.run import LOCAL_RUNNER_NAMES, RunOptions

    options = RunOptions(default_beam_args(beam_args))
    local = options.view_as(StandardOptions).runner in LOCAL_RUNNER_NAMES
    recipe, inputs = _load_recipe(args, local), _check_inputs(args)
    output_dir = _absolute(args.output).rstrip("/")
    print(f"curate: recipe {recipe.name} ({len(recipe.stages)} stages), {len(inputs.paths)} input file(s) -> {output_dir}")
    if options.view_as(TestOptions).dry_run:
        # Builds (and for Dataflow, submits for validation) the job graph only: nothing to prepare or read back.
        _launch(recipe, inputs, output_dir, options, args.save_pipeline)
        print("curate: dry run: the job graph was built; nothing ran")
        return 0
    _prepare_output(output_dir, args.overwrite, recipe, inputs)
    _launch(recipe, inputs, output_dir, options, args.save_pipeline, progress=True)
    _report_finished_run(output_dir)
    return 0


def _load_recipe(args, local: bool):
    from pipeline.recipe import RecipeError, load_recipe
    from pipeline.run import with_private_network

    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        raise UserError(str(err)) from None
    if args.allow_private_network:
        recipe = with_private_network(recipe)
    _check_stages(recipe, local)
    return recipe


def _launch(recipe, inputs, output_dir: str, options, save_pipeline: str | None, progress: bool = False) -> None:
    from contextlib import nullcontext

    from pipeline import checkpoint
    from pipeline.run import run, worker_log_path

    reporter = checkpoint.ProgressReporter(output_dir, recipe.download.rows_per_task) if progress else nullcontext()
    try:
        with reporter:
            run(recipe, inputs, output_dir, options, save_pipeline)
    except Exception as err:  # the runner's traceback is in the log above
        logs = f" (local worker output: {worker_log_path()})" if worker_log_path().exists() else ""
        raise UserError(
            f"the run failed, no _SUCCESS written (run again to resume): {_root_cause(err)}{logs}"
        ) from None


def _report_finished_run(output_dir: str) -> None:
    from pipeline import audit, checkpoint

    checkpoint.remove(output_dir)
    print(audit.summary_table(audit.read_audit(output_dir)))
    print(f"shards:  {output_dir}/shards/\nrejects: {output_dir}/rejects/")
    _write_reports(output_dir)


def _absolute(path: str) -> str:
    """Local paths made absolute: worker processes of other runners have other working folders."""
    from apache_beam.io.filesystems import FileSystems

    return os.path.abspath(path) if FileSystems.get_scheme(path) is None else path


def _write_reports(output_dir: str) -> None:
    """The HTML/JSON reports; the run itself is complete (_SUCCESS) whatever happens here."""
    from pipeline.report import write_reports

    try:
        paths = write_reports(output_dir)
    except Exception as err:
        logging.warning("the run succeeded but its report could not be written (try `curate report %s`): %s",
                        output_dir, _root_cause(err))
        return
    print("report:  " + "  ".join(paths))


def _root_cause(err: BaseException) -> str:
    """The error that says what went wrong: our own if there is one, else the innermost."""
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    ours = [e for e in chain if type(e).__module__.split(".")[0] in ("pipeline", "filters")]
    err = ours[0] if ours else chain[-1]
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def _check_stages(recipe, local: bool) -> None:
    """Stages' own pre-flight checks (e.g. model weights exist), before any work.

    On a remote runner the workers may see files this machine does not (models
    baked into the worker image), so a failed check is only a warning there.
    """
    for stage in recipe.build_stages():
        try:
            stage.check()
        except (ValueError, FileNotFoundError, ImportError) as err:
            if local:
                raise UserError(f"stage '{stage.name}': {err}") from None
            logging.warning("stage '%s': %s (not checked further: the workers may see other files)", stage.name, err)


def _check_inputs(args):
    from pipeline import readers
    from pipeline.run import InputSpec

    caption_col = None if args.caption_col.lower() == "none" else args.caption_col
    try:
        paths = sorted({path for pattern in args.input for path in readers.expand_inputs(_absolute(pattern))})
        for path in paths:
            fmt = readers.detect_format(path, args.input_format)
            readers.check_input(path, fmt, args.url_col, caption_col)
    except readers.InputError as err:
        raise UserError(str(err)) from None
    return InputSpec(tuple(paths), args.input_format, args.url_col, caption_col)


def _prepare_output(output_dir: str, overwrite: bool, recipe, inputs) -> None:
    """Clear or check the output folder, keeping the download checkpoints a killed run left."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline import audit, checkpoint

    if FileSystems.exists(f"{output_dir}/_SUCCESS") and not overwrite:
        raise UserError(f"{output_dir} already holds a finished run; pass --overwrite to replace it")
    results = [f"{output_dir}/{name}" for name in ("shards", "rejects", "report", "_SUCCESS", "recipe.json")]
    if overwrite:
        results.append(f"{output_dir}/{checkpoint.WORK_DIR}")
    results = [path for path in results if FileSystems.exists(path)]
    if results:
        # Files of a killed run are rewritten identically; start them from scratch.
        FileSystems.delete(results)
    # Download results depend on these only: other stages may change between a run and its resume.
    depends_on = {name: dataclasses.asdict(recipe.sections[name]) for name in ("download", "resize", "crawl")}
    depends_on["samples_per_shard"] = recipe.output.samples_per_shard
    manifest = checkpoint.fingerprint(depends_on, list(inputs.paths), dataclasses.asdict(inputs))
    try:
        resumable = checkpoint.prepare(output_dir, manifest)
    except checkpoint.ResumeError as err:
        raise UserError(str(err)) from None
    if resumable:
        print(f"curate: resuming: downloads of {resumable} finished task(s) are reused from {output_dir}/{checkpoint.WORK_DIR}")
    audit.write_json(f"{output_dir}/recipe.json", recipe.to_dict())


def _cmd_stages(args, beam_args: list[str]) -> int:
    from pipeline.stage_help import render

    print(render(), end="")
    return 0


def _cmd_demo(args, beam_args: list[str]) -> int:
    from pipeline.demo import run_demo

    return run_demo(args.output, args.recipe)


def default_beam_args(beam_args: list[str]) -> list[str]:
    """One worker process per core for the local runner, unless the user chose."""
    given = " ".join(beam_args)
    extra = []
    if "--runner" not in given and "--direct_num_workers" not in given:
        extra = [f"--direct_num_workers={os.cpu_count() or 1}", "--direct_running_mode=multi_processing"]
    if "--default_sdk_harness_log_level" not in given:
        extra.append("--default_sdk_harness_log_level=WARNING")  # worker start-up chatter hides the summary
    return [*beam_args, *extra]


if __name__ == "__main__":
    sys.exit(main())
