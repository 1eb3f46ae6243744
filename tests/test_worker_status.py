"""The workers' progress reaches the launcher's terminal in multi-process runs (issue 18)."""
from __future__ import annotations

import json
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.engine import checkpoint
from pipeline.cli import main
from tests.localweb_faults import FaultyWeb
from pipeline.core.layout import in_layout
from pipeline.engine.worker_status import WorkerStatus, read_statuses, summary


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_writes_its_status_every_few_seconds_with_its_recent_rate(tmp_path):
    clock, taken = Clock(), []
    status = WorkerStatus(str(tmp_path), lambda: taken.append(1) or {"in_flight": 7}, every=3.0, clock=clock)
    for _ in range(29):
        clock.now += 0.1
        status.tick()
    assert not list(tmp_path.iterdir()) and not taken  # 3 s not yet passed
    clock.now += 0.2
    status.tick()
    written = json.loads(status.path.read_text())
    assert written["rows"] == 30 and written["in_flight"] == 7 and written["rows_per_s"] == pytest.approx(30 / 3.1, 0.01)
    assert [p.name for p in tmp_path.iterdir()] == [status.path.name]  # no temporary file left
    assert in_layout(f"_work/{status.path.name}")  # curate's own file: removed with _work/, never a user's


def test_the_launcher_merges_the_workers_statuses_into_one_line(tmp_path):
    now = 1000.0
    for name, rows, rate, in_flight, at, idle in [
        ("a", 100, 40.0, 90, now - 1, False), ("b", 150, 50.0, 110, now - 2, False),
        ("c", 30, 9.0, 5, now - 60, False),  # silent for a minute
        ("d", 20, 9.0, 0, now - 1, True),  # its bundle ended
    ]:
        (tmp_path / f"progress-{name}.json").write_text(json.dumps(
            {"rows": rows, "rows_per_s": rate, "in_flight": in_flight, "limit": 128, "decoding": 3, "network_s": 9.0,
             "idle": idle,
             "processing_s": 1.0, "cpu_cores": 0.5, "cpu_contention": 1.2, "bodies_held_bytes": 2_000_000,
             "at": at}))
    (tmp_path / "progress-broken.json").write_text("{")
    line = summary(read_statuses(str(tmp_path)), now=now)
    assert line == ("download: 2/4 worker(s) active, 300 rows, 90 rows/s lately, 200 in flight (limit 256), "
                    "6 decoding, CPU 1.0 cores, bodies 4 MB, row time 90% network / 10% decode+resize (taking 1.2x its CPU time)")
    assert len(read_statuses(str(tmp_path), since=now - 1.5)) == 2  # an interrupted run's are not counted
    assert summary([]) == ""


@pytest.mark.slow
def test_a_two_process_run_prints_the_workers_progress(tmp_path, monkeypatch, capsys):
    """Beam's local runner shows nothing of its workers' logs: the line comes from their status files."""
    monkeypatch.setattr(checkpoint, "PROGRESS_EVERY", 1.0)
    with FaultyWeb(tmp_path / "web") as web:
        urls = [web.url(f"_fault/slow?seconds=0.3&n={i}") for i in range(300)]
        pq.write_table(pa.table({"url": urls, "caption": [f"row {i}" for i in range(300)]}), tmp_path / "in.parquet")
        started = time.monotonic()
        assert main(["run", "--recipe", "manifests/local-sample.yaml", "--input", str(tmp_path / "in.parquet"),
                     "--output", str(tmp_path / "out"), "--allow-private-network",
                     "--set", "download.rows_per_task=50", "--direct_num_workers=2",
                     "--direct_running_mode=multi_processing"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "worker(s) active" in line]
    assert lines, f"no worker progress in {time.monotonic() - started:.0f} s"
    rows = [int(re.search(r"([\d,]+) rows,", line).group(1).replace(",", "")) for line in lines]
    assert max(rows) > 0
    downloading = [line for line in lines if re.search(r"download: [1-9]\d*/2 worker\(s\) active", line)]
    assert downloading and re.search(r"[1-9]\d* in flight \(limit", downloading[0]) and "network" in downloading[0]
    assert not list((tmp_path / "out").glob("_work")), "the status files go with _work/"
