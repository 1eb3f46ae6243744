"""One flag for a run on a real engine on this machine: `curate run ... --engine flink-local`.

`--engine flink-local` expands to Beam's FlinkRunner with an embedded Flink
(`--flink_master=[local]`), `--engine spark-local` to its SparkRunner on a
local Spark (`--spark_master_url=local[N]`); both with the Python workers in
this process (LOOPBACK).  Options the user gave win over the expansion.

Both runners need Beam's job-server jar of the installed Beam version.  Beam
would download it at run time when no jar is given; we never let it: the jar
is fetched once with Maven (scripts/fetch_job_servers.sh, into ~/.m2) and
found there, and a Flink or Spark run without a local jar is refused with
what to do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions, PipelineOptions, SparkRunnerOptions, StandardOptions,
)

from pipeline.core.errors import JobError

FETCH_SCRIPT = "scripts/fetch_job_servers.sh"
# The newest Flink this Beam publishes a job server for: the one Beam itself defaults to.
FLINK_VERSION = FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS[-1]


@dataclass(frozen=True)
class Engine:
    runner: str
    artifact: str  # org.apache.beam:<artifact>:<beam version>, the job-server jar
    jar_option: str
    options_class: type  # the Beam options class that has jar_option
    options: tuple[tuple[str, object], ...]  # what the one flag stands for, besides runner and jar


ENGINES = {
    "flink-local": Engine(
        "FlinkRunner", f"beam-runners-flink-{FLINK_VERSION}-job-server", "flink_job_server_jar", FlinkRunnerOptions,
        (("flink_master", "[local]"), ("flink_version", FLINK_VERSION), ("environment_type", "LOOPBACK")),
    ),
    "spark-local": Engine(
        "SparkRunner", "beam-runners-spark-3-job-server", "spark_job_server_jar", SparkRunnerOptions,
        (("spark_master_url", f"local[{os.cpu_count() or 1}]"), ("environment_type", "LOOPBACK")),
    ),
}
RUNNER_ENGINES = {engine.runner: engine for engine in ENGINES.values()}


class EngineOptions(PipelineOptions):
    """Beam reads every PipelineOptions subclass, so `--engine` passes through `curate run` like --runner."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--engine", choices=sorted(ENGINES), default=None,
            help="run on a real engine on this machine; needs the job-server jar (" + FETCH_SCRIPT + ")",
        )


def maven_repository() -> Path:
    return Path(os.environ.get("CURATE_M2_REPOSITORY", Path.home() / ".m2" / "repository"))


def job_server_jar(engine: Engine, flink_version: str = FLINK_VERSION, beam_version: str = beam.__version__) -> Path:
    """Where Maven puts the job-server jar of this Beam (and Flink) version (it may not be there)."""
    artifact = engine.artifact.replace(f"flink-{FLINK_VERSION}-", f"flink-{flink_version}-")
    folder = maven_repository() / "org" / "apache" / "beam" / artifact / beam_version
    return folder / f"{artifact}-{beam_version}.jar"


def expand(options: PipelineOptions) -> PipelineOptions:
    """The options with `--engine` spelled out; a Flink or Spark run given the local jar, or refused."""
    name = options.view_as(EngineOptions).engine
    if name is None:
        _give_local_jar(options)
        return options
    engine = ENGINES[name]
    given = options.get_all_options(drop_default=True, retain_unknown_options=True)
    given.pop("engine")
    if given.get("runner") not in (None, engine.runner):
        raise JobError(f"--engine {name} runs the {engine.runner}: drop --runner={given['runner']}")
    expanded = {**dict(engine.options), "runner": engine.runner, **given}
    # Set by default for the local runner only (pipeline.tools.launch.default_beam_args): meaningless here.
    for local_only in ("direct_num_workers", "direct_running_mode"):
        expanded.pop(local_only, None)
    options = type(options).from_dictionary(expanded)
    _give_local_jar(options)
    return options


def _give_local_jar(options: PipelineOptions) -> None:
    """A Flink or Spark run without a jar would make Beam download one in the middle of the run."""
    engine = RUNNER_ENGINES.get(options.view_as(StandardOptions).runner)
    if engine is None or options.get_all_options().get(engine.jar_option):
        return
    jar = job_server_jar(engine, options.view_as(FlinkRunnerOptions).flink_version)
    if not jar.is_file():
        raise JobError(
            f"no {engine.runner} job-server jar at {jar} (Beam would download one in the middle of the run): "
            f"fetch it with `bash {FETCH_SCRIPT}` (Maven, into ~/.m2) or give --{engine.jar_option}=PATH"
        )
    setattr(options.view_as(engine.options_class), engine.jar_option, str(jar))


if __name__ == "__main__":  # for scripts/fetch_job_servers.sh: what to fetch and where Maven puts it
    for each in ENGINES.values():
        print(f"org.apache.beam:{each.artifact}:{beam.__version__} {job_server_jar(each)}")
