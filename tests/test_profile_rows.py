"""benchmarks/profile_rows.py reads py-spy's stacks: whose they are, and which are waits."""
from __future__ import annotations

from benchmarks.profile_rows import read_samples

LAUNCHER = 'process 100:"python -m pipeline.cli run --recipe r.yaml"'
FORK_SERVER = 'process 200:"python -m pipeline.engine.worker_forkserver /tmp/curate-workers-x"'
# A worker forked by the server keeps the server's command line.
FORKED_WORKER = 'process 300:"python -m pipeline.engine.worker_forkserver /tmp/curate-workers-x"'
PLAIN_WORKER = 'process 400:"python -m apache_beam.runners.worker.sdk_worker_main"'


def _stack(processes: list[str], frames: list[tuple[str, str, int]], count: int) -> str:
    return ";".join(processes + ["thread (0x1)"] + [f"{f} ({path}:{line})" for f, path, line in frames]) + f" {count}"


def test_stacks_are_the_workers_whether_forked_by_the_server_or_started_by_beam_and_waits_are_left_out(tmp_path):
    code = tmp_path / "code.py"
    code.write_text("image.load()\nfuture = self._done.get(timeout=self._next_wait())\nqueue.get(block=True)\n")
    decode = [("process_image", "/x/pipeline/media/imaging.py", 1)]
    lines = [
        _stack([LAUNCHER, FORK_SERVER, FORKED_WORKER], decode, 7),
        _stack([LAUNCHER, PLAIN_WORKER], decode, 3),
        _stack([LAUNCHER], [("write_reports", "/x/pipeline/tools/report_build.py", 1)], 2),
        # Blocked on a queue with a timeout, or blocking: waiting, not computing.
        _stack([LAUNCHER, FORK_SERVER, FORKED_WORKER], [("HostScheduler.drive", str(code), 2)], 50),
        _stack([LAUNCHER, FORK_SERVER, FORKED_WORKER], [("drain", str(code), 3)], 40),
    ]
    profile = tmp_path / "profile.txt"
    profile.write_text("\n".join(lines) + "\n")
    assert read_samples(profile) == {("workers", "decode + resize"): 10, ("launcher", "audit + report"): 2}
