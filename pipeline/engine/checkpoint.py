"""Resumable runs: download results are checkpointed per task.

Downloading is the slow, per-row part of a run.  It is done in tasks of
`download.rows_per_task` consecutive rows of one shard; as each task runs,
its results (decoded samples and download rejects) are streamed into
`DIR/_work/<shard>-<task>.ckpt.parquet`, renamed into place when the task is
complete.  A run that is killed and started again on the same output folder
reuses those results row by row (by key) instead of fetching again; every
other step runs as usual over all rows, so the output equals an
uninterrupted run's.  Because reuse is by row, a re-run with other filter
stages or thresholds reuses the downloads too.  The same files are where the
run reads images back after shuffling samples without them
(`pipeline.engine.stored_images`).

`DIR/_work/manifest.json` records what the checkpoints depend on: the
download/resize settings, input columns and shard size (as one hash), and a
content identity per input file.  A resume with other settings or with an
input file whose content changed is refused, naming the file.  The identity
of a local file is its SHA-256, read once more at the start of each run
(about 1 GB/s from a local disk); on an object store it is the checksum the
store keeps of the content (gs:// CRC32C, s3:// ETag), one metadata call per
file and no read (a filesystem without checksums is read and hashed).

Checkpoints are internal and removed when the run succeeds.  They hold plain
Arrow columns (strings, integers, the image bytes, scores as JSON text) and
are never unpickled: an output folder is often a shared bucket, and a forged
file there must not run code.  A checkpoint that cannot be read as expected
is logged and its task downloaded again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import __version__
from pipeline.engine import worker_status
from pipeline.engine.audit import write_json
from pipeline.engine.checkpoint_records import (IMAGE_COLUMNS, RECORD_SCHEMA, MalformedCheckpoint, from_rows,
                                                images_by_key, to_row)
from pipeline.core.records import Reject, Sample
from pipeline.core import layout
from pipeline.engine.writers import AtomicFile, OutputParams

_FLUSH_EVERY = 64  # records per Parquet row group: bounded memory while writing
_HASH_CHUNK = 1 << 20
_IDENTITY_THREADS = 8


class ResumeError(ValueError):
    """The checkpoints in the output folder come from another run."""


def fingerprint(sections: dict[str, Any], input_paths: list[str], input_spec: dict[str, Any]) -> dict[str, Any]:
    """What the download results depend on: if it matches, checkpoints can be reused."""
    settings = json.dumps({"sections": sections, "spec": input_spec}, sort_keys=True, default=str)
    paths = sorted(input_paths)
    # Several at once: object-store calls wait on the network, and hashlib hashes without the GIL.
    with ThreadPoolExecutor(max_workers=_IDENTITY_THREADS) as pool:
        identities = list(pool.map(_content_identity, paths))
    return {
        "version": __version__,
        "settings_sha256": hashlib.sha256(settings.encode()).hexdigest(),
        "inputs": dict(zip(paths, identities)),
    }


def _content_identity(path: str) -> dict[str, Any]:
    """What tells one version of an input file from another, for the least reading.

    Object stores keep a checksum of each object's content (gs:// CRC32C, s3://
    ETag), which costs one metadata call; a local file is hashed, since its
    size and mtime can stay the same through an edit.
    """
    if FileSystems.get_scheme(path) is not None:
        try:
            return {"size": FileSystems.match([path])[0].metadata_list[0].size_in_bytes,
                    "store_checksum": FileSystems.checksum(path)}
        except (BeamIOError, NotImplementedError, IndexError):
            pass  # a filesystem without checksums: read it
    return _streamed_sha256(path)


def _streamed_sha256(path: str) -> dict[str, Any]:
    """Size and SHA-256 of a file's bytes, read in 1 MiB chunks (constant memory)."""
    digest, size = hashlib.sha256(), 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _difference(previous: dict[str, Any], current: dict[str, Any]) -> str:
    """What changed since the unfinished run started, in words that name the file."""
    if previous.get("version") != current["version"]:
        return f"it was started by curate {previous.get('version')}, this is {current['version']}"
    before, now = previous.get("inputs", {}), current["inputs"]
    for path in sorted(set(before) | set(now)):
        if path not in now:
            return f"input {path} was part of it and is not now"
        if path not in before:
            return f"input {path} was not part of it"
        if before[path] != now[path]:
            return f"input {path} changed since (its content hash differs)"
    return "its input columns, download/resize settings or shard size were other"


def check_resumable(output_dir: str, manifest: dict[str, Any]) -> bool:
    """Whether the folder holds a work folder of this same run; ResumeError if it holds another run's."""
    manifest_path = layout.OutputLayout(output_dir).work_manifest
    if not FileSystems.exists(manifest_path):
        return False
    with FileSystems.open(manifest_path) as handle:
        check_same_run(json.loads(handle.read()), manifest, output_dir)
    return True


def prepare(output_dir: str, manifest: dict[str, Any]) -> int:
    """Check or start the work folder; returns how many task checkpoints there are to reuse."""
    if not check_resumable(output_dir, manifest):
        write_json(layout.OutputLayout(output_dir).work_manifest, manifest)
    return finished_tasks(output_dir)


def check_same_run(previous: dict[str, Any], manifest: dict[str, Any], output_dir: str) -> None:
    """ResumeError, saying what changed, unless the unfinished run's manifest equals this run's."""
    if previous != manifest:
        raise ResumeError(
            f"{output_dir} holds an unfinished run that cannot be resumed: {_difference(previous, manifest)}; "
            "pass --overwrite to start afresh"
        )


def finished_tasks(output_dir: str) -> int:
    return len(FileSystems.match([layout.OutputLayout(output_dir).checkpoints_glob])[0].metadata_list)


PROGRESS_EVERY = 10.0  # seconds between progress lines


class ProgressReporter:
    """Prints how many download tasks are finished, every `every` seconds, while a run goes on, and the
    workers' merged status (rows/s, requests in flight, where row time goes: pipeline.engine.worker_status).

    Counting checkpoint files works the same whichever runner does the work.
    """

    def __init__(self, output_dir: str, rows_per_task: int, every: float | None = None):
        self._output_dir, self._rows_per_task, self._every = output_dir, rows_per_task, every or PROGRESS_EVERY
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, daemon=True)

    def _report(self) -> None:
        start, started_at = time.monotonic(), time.time()
        while not self._stop.wait(self._every):
            done = finished_tasks(self._output_dir)
            elapsed = int(time.monotonic() - start)
            statuses = worker_status.read_statuses(layout.OutputLayout(self._output_dir).work, since=started_at)
            workers = worker_status.summary(statuses)
            print(
                f"curate: {elapsed // 60}m{elapsed % 60:02d}s: {done} download task(s) of up to "
                f"{self._rows_per_task} rows finished" + (f"; {workers}" if workers else ""),
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> "ProgressReporter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


def remove(output_dir: str) -> None:
    path = layout.OutputLayout(output_dir).work
    if FileSystems.exists(path):
        FileSystems.delete([path])


def task_path(output: OutputParams, output_dir: str, task: tuple[int, int]) -> str:
    shard_id, number = task
    return layout.OutputLayout(output_dir).checkpoint(layout.shard_name(shard_id, output.shard_digits), number)


def load(output: OutputParams, output_dir: str, task: tuple[int, int]) -> dict[str, Sample | Reject]:
    """A task's saved results by key; empty if it has no complete, well-formed checkpoint."""
    path = task_path(output, output_dir, task)
    if not FileSystems.exists(path):
        return {}
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            table = pq.read_table(handle)
        return from_rows(table)
    except (MalformedCheckpoint, pa.ArrowException, OSError, ValueError) as err:
        # A file the run did not write as expected (damaged, old format, forged): redo the task.
        logging.warning("checkpoint %s is unreadable (%s): its rows are downloaded again", path, err)
        return {}


def load_images(output: OutputParams, output_dir: str, task: tuple[int, int]) -> dict[str, bytes]:
    """A task's saved image bytes by key (downloaded rows only); empty if it has no readable checkpoint.

    Reads only the three columns it needs and builds no records: the shard
    writer asks this for every kept row, and `load`'s full records (JSON
    fields, dataclasses) cost more than the tar they go into.
    """
    path = task_path(output, output_dir, task)
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            table = pq.read_table(handle, columns=list(IMAGE_COLUMNS.names))
        return images_by_key(table)
    except (MalformedCheckpoint, pa.ArrowException, OSError, ValueError) as err:
        logging.warning("checkpoint %s is unreadable (%s): its images cannot be read back", path, err)
        return {}


class TaskCheckpoint:
    """Streams one task's results to its checkpoint; in place only if the task completes."""

    def __init__(self, output: OutputParams, output_dir: str, task: tuple[int, int]):
        self._file = AtomicFile(task_path(output, output_dir, task))
        # No compression: the records are mostly encoded images, which it cannot shrink.
        self._writer = pq.ParquetWriter(self._file.handle, RECORD_SCHEMA, compression="none")
        self._buffer: list[dict[str, Any]] = []

    def add(self, record: Sample | Reject) -> Sample | Reject:
        self._buffer.append(to_row(record))
        if len(self._buffer) >= _FLUSH_EVERY:
            self._flush()
        return record

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=RECORD_SCHEMA))
            self._buffer = []

    def __enter__(self) -> "TaskCheckpoint":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._flush()
            self._writer.close()
            self._file.commit()
        else:
            self._writer.close()
            self._file.abort()
