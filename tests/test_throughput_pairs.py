"""benchmarks/throughput.py compares source trees round by round."""
from __future__ import annotations

from benchmarks.throughput import Measurement, tree_pairs


def _run(name: str, round_number: int, seconds: float) -> Measurement:
    return Measurement(name, round_number, seconds, samples=10, rows=10, load=0.0, cpu_seconds=1.0)


def test_each_later_tree_is_paired_with_the_first_in_the_same_round():
    runs = [_run("curate, 10 rows [before]", 1, 5.0), _run("curate, 10 rows [after]", 1, 4.0),
            _run("curate, 10 rows [before]", 2, 4.0), _run("curate, 10 rows [after]", 2, 4.5),
            _run("curate, 10 rows [before]", 3, 6.0), _run("curate, 10 rows [after]", 3, 5.0),
            _run("curate, 10 rows [after]", 4, 1.0),  # no baseline in round 4: not paired
            _run("img2dataset", 1, 9.0)]
    by_name: dict[str, list[Measurement]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    assert tree_pairs(by_name, ["before", "after"]) == {
        "curate, 10 rows [after] vs [before]": {
            "rounds": 3, "faster_rounds": 2, "median_difference_s": -1.0, "differences_s": [-1.0, 0.5, -1.0]},
    }
    assert tree_pairs(by_name, [""]) == {}
