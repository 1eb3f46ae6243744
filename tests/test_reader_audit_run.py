"""A whole run over hostile lists: audit.json says what each input file held, and the counts still add up."""
import hashlib
import json
from pathlib import Path

import pytest

from pipeline.cli import main


def run_caption_only(inputs: list[Path], out: Path, workers: int = 1) -> dict:
    """A run whose caption stage drops every row (no downloads), so only the reading is exercised."""
    args = ["run", "--recipe", "manifests/local-sample.yaml", "--output", str(out),
            f"--direct_num_workers={workers}", "--set", "caption.min_words=99"]
    for path in inputs:
        args += ["--input", str(path)]
    assert main(args) == 0
    assert (out / "_SUCCESS").exists()
    return json.loads((out / "report" / "audit.json").read_text())


def hostile_inputs(directory: Path) -> list[Path]:
    lines = ["url,caption"] + [f"http://127.0.0.1:9/{i}.jpg,caption {i}" for i in range(200)]
    lines[1 + 4] = 'http://127.0.0.1:9/4.jpg,"quoted start of caption'
    csv_path = directory / "unclosed.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    jsonl_path = directory / "mixed.jsonl"
    jsonl_path.write_bytes(
        b'{"url": "http://127.0.0.1:9/a.jpg", "caption": "one two"}\n\n[[[\n'
        b'{"url": "http://127.0.0.1:9/caf\xe9.jpg"}\r{"url": "http://127.0.0.1:9/b.jpg"}'
    )
    return [csv_path, jsonl_path]


def test_audit_lists_every_input_file_and_its_physical_records(tmp_path):
    audit = run_caption_only(hostile_inputs(tmp_path), tmp_path / "out")
    counts = audit["counts"]
    assert counts["input"] == 200 + 4  # not 5 + 4: the unclosed quote swallows nothing
    assert counts["rejected_by_stage"]["read"] == {"malformed_row": 2, "bad_encoding": 1}
    by_name = {Path(entry["path"]).name: entry for entry in audit["inputs"]}
    assert by_name["unclosed.csv"] | {"path": None} == {
        "path": None, "format": "csv", "physical_lines": 201, "blank_lines": 0, "header_lines": 1,
        "physical_records": 200, "rows": 200, "multiline_rows": 0, "lines_in_multiline_rows": 0,
        "rejected_at_read": {"malformed_row": 1},
    }
    assert (by_name["mixed.jsonl"]["physical_lines"], by_name["mixed.jsonl"]["physical_records"]) == (5, 4)
    assert by_name["mixed.jsonl"]["rejected_at_read"] == {"bad_encoding": 1, "malformed_row": 1}


@pytest.mark.slow
def test_rerun_gives_identical_rejects_and_inputs(tmp_path):
    inputs = hostile_inputs(tmp_path)
    first = run_caption_only(inputs, tmp_path / "a")
    second = run_caption_only(inputs, tmp_path / "b", workers=2)
    assert first["inputs"] == second["inputs"]
    digests = [
        sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "rejects").glob("*.parquet"))
        for out in (tmp_path / "a", tmp_path / "b")
    ]
    assert digests[0] == digests[1] and digests[0]
