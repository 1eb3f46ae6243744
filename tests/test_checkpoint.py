"""Checkpoint files: plain Arrow rows that read back as the records written; anything else is redone."""
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import layout
from pipeline.engine import checkpoint
from pipeline.core.records import Reject, Sample
from pipeline.engine.writers import OutputParams

OUTPUT = OutputParams(samples_per_shard=10)


def records():
    sample = Sample(key="000000", shard_id=0, url="http://a/x.jpg", caption="a cat", extra={"row": 1, "tags": ["x"]},
                    image=b"\xff\xd8jpeg", image_format="jpg", width=4, height=3, original_width=8,
                    original_height=6, sha256="ab" * 32, fields={"phash": "00ff", "score": 0.25})
    sample.image_ref = (0, 0)
    reject = Reject(key="000001", shard_id=0, url="http://a/y.jpg", caption=None, stage="download",
                    reason="http_404", fields={"status": 404}, extra={"row": 2})
    return [sample, reject]


def test_records_read_back_as_written(tmp_path):
    with checkpoint.TaskCheckpoint(OUTPUT, str(tmp_path), (0, 0)) as saved:
        for record in records():
            saved.add(record)
    loaded = checkpoint.load(OUTPUT, str(tmp_path), (0, 0))
    assert list(loaded.values()) == records()
    assert loaded["000000"].image_ref == (0, 0)


def test_images_read_back_by_key_for_downloaded_rows_only(tmp_path):
    with checkpoint.TaskCheckpoint(OUTPUT, str(tmp_path), (0, 0)) as saved:
        for record in records():
            saved.add(record)
    assert checkpoint.load_images(OUTPUT, str(tmp_path), (0, 0)) == {"000000": b"\xff\xd8jpeg"}


def test_images_of_a_checkpoint_of_another_shape_are_none(tmp_path, caplog):
    path = checkpoint.task_path(OUTPUT, str(tmp_path), (0, 0))
    (tmp_path / layout.WORK).mkdir()
    pq.write_table(pa.table({"kind": ["sample"], "key": ["000000"], "image": ["not bytes"]}), path)
    with caplog.at_level(logging.WARNING):
        assert checkpoint.load_images(OUTPUT, str(tmp_path), (0, 0)) == {}
    assert "unreadable" in caplog.text


@pytest.mark.parametrize("table", [
    pa.table({"key": ["000000"], "record": [b"\x80\x04K\x01."]}),  # the old pickled layout
    pa.table({"kind": ["evil"]}),
])
def test_a_checkpoint_of_another_shape_is_logged_and_redone(tmp_path, caplog, table):
    path = checkpoint.task_path(OUTPUT, str(tmp_path), (0, 0))
    (tmp_path / layout.WORK).mkdir()
    pq.write_table(table, path)
    with caplog.at_level(logging.WARNING):
        assert checkpoint.load(OUTPUT, str(tmp_path), (0, 0)) == {}
    assert "downloaded again" in caplog.text


def test_a_row_with_an_unknown_kind_or_bad_json_is_redone(tmp_path):
    from pipeline.engine.checkpoint_records import RECORD_SCHEMA, to_row

    (tmp_path / layout.WORK).mkdir()
    for damage in ({"kind": "evil"}, {"fields": "{not json"}, {"extra": "[1, 2]"}, {"key": None}):
        row = {**to_row(records()[0]), **damage}
        path = checkpoint.task_path(OUTPUT, str(tmp_path), (0, 0))
        pq.write_table(pa.Table.from_pylist([row], schema=RECORD_SCHEMA), path)
        assert checkpoint.load(OUTPUT, str(tmp_path), (0, 0)) == {}, damage


def test_an_object_store_input_is_identified_by_its_stored_checksum_without_reading_it(monkeypatch):
    from apache_beam.io.filesystem import FileMetadata, MatchResult
    from apache_beam.io.filesystems import FileSystems

    path, checksums = "gs://bucket/urls.parquet", iter(["crc-before", "crc-after"])
    monkeypatch.setattr(FileSystems, "match", lambda patterns: [MatchResult(path, [FileMetadata(path, 100)])])
    monkeypatch.setattr(FileSystems, "checksum", lambda p: next(checksums))
    monkeypatch.setattr(FileSystems, "open", lambda *a, **k: pytest.fail("the input was read"))
    before = checkpoint.fingerprint({}, [path], {})
    after = checkpoint.fingerprint({}, [path], {})
    assert before["inputs"][path] == {"size": 100, "store_checksum": "crc-before"}
    with pytest.raises(checkpoint.ResumeError, match=f"input {path} changed"):
        checkpoint.check_same_run(before, after, "gs://bucket/out")
