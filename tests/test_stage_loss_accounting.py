"""A stage whose outputs go missing cannot end in a "successful" run (issue 17's lost balance rows).

Beam drops, without a word, whatever a DoFn emits to an output tag nothing
consumes (apache_beam.runners.worker.operations._TaggedReceivers); worker
processes import stage code from disk, so code edited under a running job can
emit to tags the launcher's graph does not have.  The run counts its input
rows at the read and its kept and rejected rows in the files written, and
refuses `_SUCCESS` when they differ: such a loss fails the run.
"""
import pyarrow as pa
import pyarrow.parquet as pq

import filters.balance
from pipeline.cli import main


def test_rows_a_stage_loses_fail_the_run_with_an_accounting_error(tmp_path, monkeypatch, capsys):
    rows = [{"url": f"http://pool.test/{i}.jpg", "caption": f"caption {i}"} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    (tmp_path / "entries.txt").write_text("listed\n")
    (tmp_path / "recipe.yaml").write_text(
        f"stages:\n  - balance: {{t: 1, entries_path: {tmp_path / 'entries.txt'}}}\n")  # no caption matches

    def split_of_another_version(self, sample, table):
        yield filters.balance.beam.pvalue.TaggedOutput("rejected_v2", sample.reject("balance", "no_entry_match"))

    monkeypatch.setattr(filters.balance._Split, "process", split_of_another_version)
    out = tmp_path / "out"
    assert main(["run", "--recipe", str(tmp_path / "recipe.yaml"), "--input", str(tmp_path / "urls.parquet"),
                 "--output", str(out), "--direct_num_workers=1"]) != 0
    assert "accounting mismatch: 6 input rows but 0 kept + 0 rejected" in capsys.readouterr().err
    assert not (out / "_SUCCESS").exists()
