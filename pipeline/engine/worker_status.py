"""Download progress of every worker process, merged into the line `curate run` prints.

Beam's local runner shows a worker's log only in its own log file, and its
metrics only at the end.  So each download worker writes a small JSON status
(rows done, rows/s lately, requests in flight and the limit, where row time
goes, how long decode+resize took per CPU second, CPU used, body bytes held) to `OUTPUT/_work/progress-<host>-<pid>.json`
every few seconds, replacing it atomically, and the launching process merges
the files it finds into one line (pipeline.engine.checkpoint.ProgressReporter).  Only
for a local output folder: workers of a remote runner write nothing here (the
launcher still counts finished tasks there).  The files go with `_work/` when
the run completes.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Callable

from apache_beam.io.filesystems import FileSystems

from pipeline.core import layout

PREFIX = layout.PROGRESS_PREFIX
STALE_AFTER = 15.0  # seconds: a worker silent this long is not downloading (gone, or stuck in a long row)


class WorkerStatus:
    """Counts one worker's finished rows and writes its status every `every` seconds (not thread-safe:
    called from the thread that yields the rows)."""

    def __init__(self, work_dir: str, fields: Callable[[], dict], every: float = 3.0,
                 clock: Callable[[], float] = time.monotonic):
        local = FileSystems.get_scheme(work_dir) is None
        self.path = Path(work_dir) / f"{PREFIX}{socket.gethostname()}-{os.getpid()}.json" if local else None
        self._fields, self._every, self._clock = fields, every, clock
        self.rows = 0
        self._since, self._rows_since = clock(), 0
        self.last: dict = {}  # the last status taken, also for the worker's log line

    def tick(self) -> None:
        self.rows += 1
        if self._clock() - self._since >= self._every:
            self.write()

    def write(self, idle: bool = False) -> None:
        """Takes the status now (`fields()` may reset what it measures) and writes it, if the output is local.
        `idle`: the worker has no rows to download (its bundle ended)."""
        now = self._clock()
        rate = (self.rows - self._rows_since) / max(now - self._since, 1e-9)
        self._since, self._rows_since = now, self.rows
        self.last = {"rows": self.rows, "rows_per_s": round(rate, 1), **self._fields(), "at": time.time(),
                     "idle": idle}
        if self.path is not None:
            _write_atomically(self.path, json.dumps(self.last))


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # output_folder.LAYOUT's form
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError:
        pass  # progress is a courtesy: a full disk or a removed folder must not fail the download


def read_statuses(work_dir: str, since: float = 0.0) -> list[dict]:
    """The statuses workers wrote at or after `since` (time.time(): not an interrupted run's), none for a
    remote output folder; unreadable ones are skipped."""
    statuses = []
    if FileSystems.get_scheme(work_dir) is None:
        for path in Path(work_dir).glob(f"{PREFIX}*.json"):
            try:
                status = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced, or not ours
            if isinstance(status, dict) and status.get("at", 0) >= since:
                statuses.append(status)
    return statuses


def summary(statuses: list[dict], now: float | None = None) -> str:
    """One line for all workers: rows, rows/s lately, requests in flight, where row time goes."""
    if not statuses:
        return ""
    now = time.time() if now is None else now
    active = [status for status in statuses if now - status.get("at", 0) < STALE_AFTER and not status.get("idle")]
    rows = sum(status.get("rows", 0) for status in statuses)
    rate = sum(status.get("rows_per_s", 0.0) for status in active)
    in_flight = sum(status.get("in_flight", 0) for status in active)
    limit = sum(status.get("limit", 0) for status in active)
    decoding = sum(status.get("decoding", 0) for status in active)
    network = sum(status.get("network_s", 0.0) for status in active)
    processing = sum(status.get("processing_s", 0.0) for status in active)
    cores = sum(status.get("cpu_cores", 0.0) for status in active)
    held = sum(status.get("bodies_held_bytes", 0) for status in active)
    line = (f"download: {len(active)}/{len(statuses)} worker(s) active, {rows:,} rows, {rate:.0f} rows/s lately, "
            f"{in_flight} in flight (limit {limit}), {decoding} decoding, CPU {cores:.1f} cores, bodies {held / 1e6:.0f} MB")
    if network + processing > 0:
        share = network / (network + processing)
        line += f", row time {share:.0%} network / {1 - share:.0%} decode+resize"
    contention = [status["cpu_contention"] for status in active if status.get("cpu_contention")]
    if contention:  # 2 or more: rows take turns for the CPU, more in flight cannot help
        line += f" (taking {sum(contention) / len(contention):.1f}x its CPU time)"
    return line
