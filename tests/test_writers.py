import glob
import io
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core.records import Sample
from pipeline.engine.writers import OutputParams, ParquetShardWriter, WebDatasetShardWriter, write_shard


def make_sample(key, caption="a caption"):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, "JPEG")
    return Sample(key=key, shard_id=0, url=f"http://x/{key}.jpg", caption=caption, image=buffer.getvalue(),
                  image_format="jpg", width=4, height=4, original_width=4, original_height=4,
                  sha256="0" * 64, fields={"score": 0.5}, extra={"source": "test"})


@pytest.mark.parametrize("writer_cls, fmt", [(WebDatasetShardWriter, "webdataset"), (ParquetShardWriter, "parquet")])
def test_nothing_is_visible_under_the_final_name_until_close(tmp_path, writer_cls, fmt):
    from pipeline.engine.writers import schema_of

    sample = make_sample("000000001")
    writer = writer_cls(str(tmp_path), "00000", schema_of([sample], fmt))
    writer.write(sample)
    assert glob.glob(f"{tmp_path}/shards/*") == []  # only hidden temporary files so far
    paths = writer.close()
    assert sorted(glob.glob(f"{tmp_path}/shards/*")) == sorted(paths)
    assert glob.glob(f"{tmp_path}/shards/.*") == []


def test_webdataset_shard_holds_image_caption_and_metadata_in_key_order(tmp_path):
    samples = [make_sample("000000002", "second"), make_sample("000000001", "first")]
    tar_path, parquet_path = write_shard(OutputParams(), str(tmp_path), 0, samples)
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        assert tar.extractfile("000000001.txt").read() == b"first"
    assert names == [f"00000000{i}.{ext}" for i in (1, 2) for ext in ("jpg", "json", "txt")]
    table = pq.read_table(parquet_path).to_pylist()
    assert [row["key"] for row in table] == ["000000001", "000000002"]
    assert table[0]["score"] == 0.5 and table[0]["source"] == "test"


def test_parquet_format_holds_the_image_bytes(tmp_path):
    (path,) = write_shard(OutputParams(format="parquet"), str(tmp_path), 3, [make_sample("000030001")])
    assert path.endswith("shards/00003.parquet")
    row = pq.read_table(path).to_pylist()[0]
    assert Image.open(io.BytesIO(row["jpg"])).size == (4, 4)


def test_same_samples_give_identical_bytes(tmp_path):
    first = write_shard(OutputParams(), str(tmp_path / "a"), 0, [make_sample("000000001")])
    second = write_shard(OutputParams(), str(tmp_path / "b"), 0, [make_sample("000000001")])
    for a, b in zip(first, second):
        assert open(a, "rb").read() == open(b, "rb").read()


@pytest.mark.parametrize("per_shard, shard, index, key", [
    (10000, 3, 42, "000030042"), (4, 0, 3, "000003"), (100, 123456, 7, "12345607"),  # more shards than digits
])
def test_keys_name_shard_and_position(per_shard, shard, index, key):
    params = OutputParams(samples_per_shard=per_shard)
    assert params.key(shard, index) == key
    assert params.index_in_shard(key) == index


def test_records_pickle_without_their_field_names():
    """Every shuffle pickles records: field names would be a third of a sample's bytes."""
    import pickle

    from pipeline.core.records import Sample

    sample = make_sample("000000001")
    sample.fields["phash"] = "00ff00ff00ff00ff"
    for record in (sample, sample.reject("caption", "too_short")):
        data = pickle.dumps(record, protocol=5)
        assert pickle.loads(data) == record
        assert b"shard_id" not in data and b"url" not in data
    assert isinstance(pickle.loads(pickle.dumps(sample)), Sample)


def test_a_tar_is_never_visible_without_its_parquet(tmp_path, monkeypatch):
    import pipeline.engine.writers as writers

    def fail(path, table):
        raise OSError("disk full")

    monkeypatch.setattr(writers, "write_parquet_atomically", fail)
    with pytest.raises(OSError):
        write_shard(OutputParams(), str(tmp_path), 0, [make_sample("000000001")])
    assert glob.glob(f"{tmp_path}/shards/*") == glob.glob(f"{tmp_path}/shards/.*") == []


def embedded_sample(key, dim=512):
    import numpy as np

    sample = make_sample(key)
    vector = np.random.default_rng(int(key)).standard_normal(dim).astype(np.float16)
    sample.fields["clip_image_embedding"] = vector.tolist()  # as filters/clip_score stores it
    return sample, vector


def test_embeddings_are_float16_in_the_parquet_and_not_in_the_json(tmp_path):
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.dataset as ds

    (sample, vector), (unscored, _) = embedded_sample("000000001"), embedded_sample("000000002")
    unscored.fields["clip_image_embedding"] = None  # an image that did not decode
    tar_path, parquet_path = write_shard(OutputParams(), str(tmp_path), 0, [sample, unscored])
    column = pq.read_table(parquet_path).schema.field("clip_image_embedding")
    assert column.type == pa.list_(pa.float16())
    frame = ds.dataset([parquet_path]).to_table().to_pandas()
    assert frame.clip_image_embedding[0].dtype == np.float16
    assert np.array_equal(frame.clip_image_embedding[0], vector) and frame.clip_image_embedding[1] is None
    with tarfile.open(tar_path) as tar:
        meta = json.loads(tar.extractfile("000000001.json").read())
    assert "clip_image_embedding" not in meta and meta["score"] == 0.5


def test_every_shard_has_the_run_schema_even_where_a_column_is_all_null(tmp_path):
    import pyarrow.dataset as ds

    from pipeline.engine.writers import schema_of

    first, second = make_sample("000000001"), make_sample("000010001")
    first.extra["note"], second.extra["note"] = None, "a note"
    first.extra["count"], second.extra["count"] = 1, "one"  # mixed types: JSON text
    schema = schema_of([first, second], "webdataset")
    paths = [write_shard(OutputParams(), str(tmp_path), i, [s], schema=schema)[1] for i, s in enumerate([first, second])]
    assert pq.read_schema(paths[0]) == pq.read_schema(paths[1])
    rows = ds.dataset(paths).to_table().to_pylist()
    assert [(r["note"], r["count"]) for r in rows] == [(None, "1"), ("a note", "one")]


def test_a_value_the_run_schema_cannot_hold_is_named_not_raised():
    from pipeline.engine import shard_schema

    sample = make_sample("000000001")
    schema = schema_of_samples([sample])
    assert shard_schema.misfit(sample.metadata(), schema) is None
    sample.fields["width"] = "wide"  # a stage field that shadows an int32 column
    assert shard_schema.misfit(sample.metadata(), schema) == "width"


def schema_of_samples(samples):
    from pipeline.engine.writers import schema_of

    return schema_of(samples, "webdataset")


def test_shard_numbers_are_the_dense_rank_of_blocks_that_kept_rows():
    from pipeline.engine.write_outputs import shard_plan

    blocks = {0: {"download/http_404": 3}, 1: {"kept": 2, "download/decode_error": 1}, 2: {"caption/empty": 3},
              4: {"kept": 3}, 5: {"download/timeout": 3}}
    plan = shard_plan(blocks)
    assert {block: number for block, (number, _) in plan.items()} == {1: 0, 4: 1}
    first, second = plan[1][1], plan[4][1]
    assert first["input_blocks"] == [0, 1, 2] and second["input_blocks"] == [4, 5]
    assert (first["count"], first["successes"], first["failed_to_download"], first["failed_to_resize"],
            first["filtered"]) == (9, 2, 3, 1, 3)
    assert second["status_dict"] == {"success": 3, "download/timeout": 3}
    assert shard_plan({0: {"download/http_404": 3}}) == {}


# ---------------------------------------------------------------- tar bytes: FixedHeaderTar is tarfile's output


def _tarfile_stream(members: list[tuple[str, bytes]]) -> bytes:
    """What the writer wrote before FixedHeaderTar: tarfile's "w|" ustar stream, fixed owner, mode and time."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _fixed_header_stream(members: list[tuple[str, bytes]]) -> bytes:
    from pipeline.engine.tar_stream import FixedHeaderTar

    out = io.BytesIO()
    tar = FixedHeaderTar(out, mode=0o444, mtime=0)
    for name, data in members:
        tar.add(name, data)
    tar.close()
    return out.getvalue()


@pytest.mark.parametrize("members", [
    [],
    [("000000001.jpg", b"\xff\xd8" * 700), ("000000001.json", b"{}"), ("000000001.txt", b"")],
    [("folder/" * 10 + "x" * 80 + ".txt", b"a 154-byte name: tarfile splits it into the prefix and name fields")],
    [("caf\u00e9/\u00fcber.txt", b"non-ASCII names, in UTF-8 as tarfile encodes them")],
    [("a/" * 49 + "b.jpg", bytes(512)), ("c.txt", bytes(511)), ("d.txt", bytes(513)), ("e.txt", bytes(10240))],
])
def test_fixed_header_tar_writes_tarfiles_bytes(members):
    assert _fixed_header_stream(members) == _tarfile_stream(members)


def test_fixed_header_tar_matches_tarfile_for_any_name_and_size():
    from hypothesis import given, settings, strategies as st

    names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=120)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(names, st.binary(max_size=1500)), max_size=4))
    def check(members):
        try:
            expected = _tarfile_stream(members)
        except ValueError:  # a name tarfile cannot put in a ustar header: so does FixedHeaderTar
            with pytest.raises(ValueError):
                _fixed_header_stream(members)
            return
        assert _fixed_header_stream(members) == expected

    check()


def test_a_written_shard_is_byte_for_byte_what_tarfile_wrote(tmp_path):
    from pipeline.engine.writers import json_columns, json_metadata, schema_of

    samples = [make_sample(f"00000000{i}", caption=f"caption {i}") for i in range(3)]
    tar_path, _parquet = write_shard(OutputParams(), str(tmp_path), 0, samples)
    columns = json_columns(schema_of(samples, "webdataset"))
    members = [
        (f"{s.key}.{ext}", data)
        for s in samples
        for ext, data in sorted({"jpg": s.image, "json": json_metadata(s.metadata(), columns),
                                 "txt": s.caption.encode()}.items())
    ]
    assert open(tar_path, "rb").read() == _tarfile_stream(members)
