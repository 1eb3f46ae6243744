"""`curate`: the command line.

    curate run --recipe manifests/local-sample.yaml --input urls.parquet --output out/
    curate stages            # every registered stage and its parameters
    curate demo --output DIR # the bundled sample, end to end, on a loopback server
    curate report DIR        # regenerate report/audit.json, optout.json and audit.html
    curate takedown ...      # remove opted-out (or hash-listed) samples from a built dataset

Options `curate run` does not know are Beam pipeline options (`--runner`,
`--direct_num_workers`, `--project`, ...), passed through unchanged.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from pipeline import __version__

from pipeline.engine import malloc, worker_forkserver
from pipeline.core.errors import JobError

EPILOG_RUN = """\
Beam options: anything not listed above goes to Beam's PipelineOptions, e.g.
  --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
  --direct_num_workers=2 --direct_running_mode=multi_processing
The default runner is Beam's in-process FnApiRunner (never the Prism binary,
which Beam would try to download), with one worker process per core; inputs
of about 1,000 rows or fewer run in this process unless a --direct_* option
says otherwise.

Output (DIR):
  shards/00000.tar + shards/00000.parquet   WebDataset shard + its metadata
  shards/00000.npz                          with embeddings_file: npz, its embeddings (DataComp's layout)
  rejects/00000.parquet                     every dropped row: stage, reason, scores
  report/audit.json                         counts: input = kept + rejected, score distributions
  report/audit.html                         the same as one self-contained page with plots
  report/optout.json                        opt-out drops by rule and by domain
  recipe.json                               the resolved recipe of this run
  _SUCCESS                                  written last, when all of the above is complete
  _curate_output.json                       written first: marks DIR as a curate output

A run that stops (killed, failed) resumes when started again with the same
--output: downloads already finished (DIR/_work/) are reused row by row. A
resume whose inputs changed (by content) or whose download settings differ is
refused.

DIR must be new, empty, or a curate output: any other folder is refused with
nothing touched, as is DIR inside an input or naming a file. curate removes
only files of its own layout (above); --overwrite removes those, whoever wrote
them, and keeps every other file. One run per DIR (DIR/_curate.lock; the lock
of a run that died on this machine is taken over).
"""


def main(argv: list[str] | None = None) -> int:
    malloc.limit_arenas()  # first, before any thread starts
    argv = sys.argv[1:] if argv is None else list(argv)
    if _may_start_worker_processes(argv):
        # Before this process imports Beam: the workers' imports run beside its own (on another core).
        worker_forkserver.start()
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
    except JobError as err:
        print(f"curate: error: {err}", file=sys.stderr)
        return 2


def entry_point() -> None:
    """The `curate` command (and `python -m pipeline.cli`): `main`, then the exit."""
    code = main()
    _skip_the_last_collection()
    sys.exit(code)


def _skip_the_last_collection() -> None:
    """Python's finalization ends with a garbage collection over every object still alive: with Beam
    imported that took ~0.6 s at the end of every command (~0.9 s with torch).  What is garbage now is
    collected here, so its finalizers run (files are flushed and closed) as they would have; the rest
    goes to the permanent generation, which that last collection skips.  Modules are still torn down
    and atexit handlers still run; only cycles that become garbage during that teardown are left to
    the operating system, as any process's memory is."""
    gc.collect()
    gc.freeze()


# Harmless messages Beam prints on every local run.
_NOISE = ("apitools not found", "semi_persistent_directory")


def _drop_known_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(noise in message for noise in _NOISE)


def _may_start_worker_processes(argv: list[str]) -> bool:
    """Whether `curate run` may use local worker processes (the run decides; see pipeline.tools.launch)."""
    if not argv or argv[0] != "run" or (os.cpu_count() or 1) < 2:
        return False
    chosen = " ".join(argv)
    if any(flag in chosen for flag in ("--runner", "--engine", "--dry_run", "--help", " -h")):
        return False
    return "--direct_running_mode" not in chosen or "--direct_running_mode=multi_processing" in chosen


def _parser() -> argparse.ArgumentParser:
    from pipeline.ingest.input_files import FORMATS

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
    run.add_argument(
        "--overwrite", action="store_true",
        help="replace a finished run, or use a folder curate did not write: removes the files of curate's layout "
        "(shards, rejects, reports, recipe.json, _SUCCESS, _work/) and keeps any other file",
    )
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
    demo.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="STAGE.PARAM=VALUE",
        help="override one recipe parameter, as for `curate run`; repeatable",
    )
    demo.set_defaults(handler=_cmd_demo)

    from pipeline.tools.eval_index import add_eval_index_command
    from pipeline.tools.report_build import add_report_command
    from pipeline.tools.takedown import add_takedown_command

    add_report_command(commands)
    add_takedown_command(commands)
    add_eval_index_command(commands)
    return parser


def _cmd_run(args, beam_args: list[str]) -> int:
    from pipeline.tools import launch

    recipe = launch.load_job_recipe(args.recipe, args.overrides, args.allow_private_network)
    caption_col = None if args.caption_col.lower() == "none" else args.caption_col
    inputs = launch.resolve_inputs(args.input, args.input_format, args.url_col, caption_col)
    result = launch.run_job(
        recipe, inputs, args.output, beam_args, overwrite=args.overwrite, save_pipeline=args.save_pipeline,
        progress=True,
    )
    launch.print_summary(result)
    return 0


def _cmd_stages(args, beam_args: list[str]) -> int:
    from pipeline.tools.stage_help import render

    print(render(), end="")
    return 0


def _cmd_demo(args, beam_args: list[str]) -> int:
    from pipeline.demo.run_demo import run_demo

    return run_demo(args.output, args.recipe, overrides=args.overrides)


if __name__ == "__main__":
    entry_point()
