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
(`pipeline.stored_images`).

`DIR/_work/manifest.json` records what the checkpoints depend on (inputs,
input columns, download and resize settings, shard size); a resume with other
values is refused.  Checkpoints are internal (pickled records in a Parquet
column) and removed when the run succeeds.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import sys
import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import __version__
from pipeline.audit import write_json
from pipeline.schema import Reject, Sample
from pipeline.writers import AtomicFile, OutputParams, shard_name

WORK_DIR = "_work"
_SCHEMA = pa.schema([("key", pa.string()), ("record", pa.binary())])
_FLUSH_EVERY = 64  # records per Parquet row group: bounded memory while writing


class ResumeError(ValueError):
    """The checkpoints in the output folder come from another run."""


def fingerprint(sections: dict[str, Any], input_paths: list[str], input_spec: dict[str, Any]) -> dict[str, Any]:
    """What the download results depend on: if it matches, checkpoints can be reused."""
    sizes = {m.path: m.size_in_bytes for r in FileSystems.match(input_paths) for m in r.metadata_list}
    identity = json.dumps({"sections": sections, "inputs": sizes, "spec": input_spec}, sort_keys=True, default=str)
    return {"version": __version__, "sha256": hashlib.sha256(identity.encode()).hexdigest()}


def prepare(output_dir: str, manifest: dict[str, Any]) -> int:
    """Check or start the work folder; returns how many task checkpoints there are to reuse."""
    manifest_path = f"{output_dir}/{WORK_DIR}/manifest.json"
    if FileSystems.exists(manifest_path):
        with FileSystems.open(manifest_path) as handle:
            previous = json.loads(handle.read())
        if previous != manifest:
            raise ResumeError(
                f"{output_dir} holds an unfinished run with other inputs, download/resize settings or version; "
                "pass --overwrite to start afresh"
            )
    else:
        write_json(manifest_path, manifest)
    return finished_tasks(output_dir)


def finished_tasks(output_dir: str) -> int:
    return len(FileSystems.match([f"{output_dir}/{WORK_DIR}/*.ckpt.parquet"])[0].metadata_list)


class ProgressReporter:
    """Prints how many download tasks are finished, every `every` seconds, while a run goes on.

    Counting checkpoint files works the same whichever runner does the work.
    """

    def __init__(self, output_dir: str, rows_per_task: int, every: float = 15.0):
        self._output_dir, self._rows_per_task, self._every = output_dir, rows_per_task, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, daemon=True)

    def _report(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self._every):
            done = finished_tasks(self._output_dir)
            elapsed = int(time.monotonic() - start)
            print(
                f"curate: {elapsed // 60}m{elapsed % 60:02d}s: {done} download task(s) of up to "
                f"{self._rows_per_task} rows finished",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> "ProgressReporter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


def remove(output_dir: str) -> None:
    path = f"{output_dir}/{WORK_DIR}"
    if FileSystems.exists(path):
        FileSystems.delete([path])


def task_path(output: OutputParams, output_dir: str, task: tuple[int, int]) -> str:
    shard_id, number = task
    return f"{output_dir}/{WORK_DIR}/{shard_name(shard_id, output.shard_digits)}-{number:05d}.ckpt.parquet"


def load(output: OutputParams, output_dir: str, task: tuple[int, int]) -> dict[str, Sample | Reject]:
    """A task's saved results by key; empty if it has no complete checkpoint."""
    path = task_path(output, output_dir, task)
    if not FileSystems.exists(path):
        return {}
    with FileSystems.open(path) as handle:
        table = pq.read_table(handle)
    return {key: pickle.loads(blob) for key, blob in zip(table.column("key").to_pylist(), table.column("record").to_pylist())}


class TaskCheckpoint:
    """Streams one task's results to its checkpoint; in place only if the task completes."""

    def __init__(self, output: OutputParams, output_dir: str, task: tuple[int, int]):
        self._file = AtomicFile(task_path(output, output_dir, task))
        # No compression: the records are mostly encoded images, which it cannot shrink.
        self._writer = pq.ParquetWriter(self._file.handle, _SCHEMA, compression="none")
        self._buffer: list[dict[str, Any]] = []

    def add(self, record: Sample | Reject) -> Sample | Reject:
        self._buffer.append({"key": record.key, "record": pickle.dumps(record, protocol=5)})
        if len(self._buffer) >= _FLUSH_EVERY:
            self._flush()
        return record

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=_SCHEMA))
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
