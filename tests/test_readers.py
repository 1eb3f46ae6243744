"""Tests for the input list readers: formats, column handling, malformed rows, compression, listing, streaming."""
from __future__ import annotations

import bz2
import datetime
import decimal
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from apache_beam.io.filesystems import FileSystems

from pipeline.ingest.input_files import FORMATS, InputError, InputRow, detect_format, expand_inputs
from pipeline.ingest.readers import check_input, read_rows

ROWS = [
    {"url": "http://a.test/1.jpg", "caption": "first", "uid": "u1", "license": "cc-by"},
    {"url": "http://a.test/2.jpg", "caption": "second, with a comma", "uid": "u2", "license": "cc0"},
]


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".bz2":
        data = bz2.compress(data)
    elif path.suffix == ".zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def delimited_text(rows: list[dict], delimiter: str) -> str:
    names = list(rows[0])
    lines = [delimiter.join(names)]
    for row in rows:
        lines.append(delimiter.join(_quoted(str(row[name]), delimiter) for name in names))
    return "\n".join(lines) + "\n"


def _quoted(value: str, delimiter: str) -> str:
    needs_quotes = any(char in value for char in (delimiter, '"', "\n"))
    return '"' + value.replace('"', '""') + '"' if needs_quotes else value


def write_rows(directory: Path, fmt: str, rows: list[dict], name: str = "input") -> Path:
    """`rows` written as a file of format `fmt` (every row has the same columns)."""
    path = directory / f"{name}.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if fmt == "jsonl":
        return write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return write_text(path, delimited_text(rows, "," if fmt == "csv" else "\t"))


def read_all(path: Path, fmt: str, url_col: str = "url", caption_col: str | None = "caption") -> list[InputRow]:
    return list(read_rows(str(path), fmt, url_col, caption_col))


TABLE_FORMATS = ("parquet", "csv", "tsv", "jsonl")


# ------------------------------------------------------------------- columns


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_url_caption_and_extra_columns(tmp_path, fmt):
    rows = read_all(write_rows(tmp_path, fmt, ROWS), fmt)
    assert rows == [
        InputRow("http://a.test/1.jpg", "first", {"uid": "u1", "license": "cc-by"}),
        InputRow("http://a.test/2.jpg", "second, with a comma", {"uid": "u2", "license": "cc0"}),
    ]


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_custom_column_names(tmp_path, fmt):
    renamed = [{"URL": r["url"], "TEXT": r["caption"], "uid": r["uid"]} for r in ROWS]
    rows = read_all(write_rows(tmp_path, fmt, renamed), fmt, url_col="URL", caption_col="TEXT")
    assert [(r.url, r.caption, r.extra) for r in rows] == [
        ("http://a.test/1.jpg", "first", {"uid": "u1"}),
        ("http://a.test/2.jpg", "second, with a comma", {"uid": "u2"}),
    ]


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_missing_caption_column_gives_none_captions(tmp_path, fmt):
    path = write_rows(tmp_path, fmt, [{"url": "http://a.test/1.jpg", "uid": "u1"}])
    assert read_all(path, fmt) == [InputRow("http://a.test/1.jpg", None, {"uid": "u1"})]


def test_no_caption_column_keeps_caption_in_extra(tmp_path):
    path = write_rows(tmp_path, "csv", ROWS[:1])
    [row] = read_all(path, "csv", caption_col=None)
    assert row.caption is None
    assert row.extra == {"caption": "first", "uid": "u1", "license": "cc-by"}


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_missing_url_column_names_file_column_and_columns_found(tmp_path, fmt):
    path = write_rows(tmp_path, fmt, [{"link": "http://a.test/1.jpg", "caption": "x"}])
    rows = read_rows(str(path), fmt)
    with pytest.raises(InputError) as raised:
        next(rows)  # raised before any row is yielded
    message = str(raised.value)
    assert str(path) in message
    assert "'url'" in message
    assert "'link'" in message and "'caption'" in message


@pytest.mark.parametrize("fmt", ("csv", "jsonl", "parquet"))
def test_missing_url_values_are_rows_with_an_error(tmp_path, fmt):
    rows_in = [
        {"url": "http://a.test/1.jpg", "caption": "ok"},
        {"url": "", "caption": "empty"},
        {"url": "   ", "caption": "blank"},
        {"url": None if fmt != "csv" else "", "caption": "null"},
    ]
    rows = read_all(write_rows(tmp_path, fmt, rows_in), fmt)
    assert [(r.url, r.caption, r.error) for r in rows] == [
        ("http://a.test/1.jpg", "ok", None),
        (None, "empty", "missing_url"),
        (None, "blank", "missing_url"),
        (None, "null", "missing_url"),
    ]


def test_jsonl_row_without_the_url_key_is_missing_url(tmp_path):
    path = write_text(tmp_path / "in.jsonl", '{"url": "http://a.test/1.jpg"}\n{"caption": "no url"}\n')
    assert [(r.url, r.caption, r.error) for r in read_all(path, "jsonl")] == [
        ("http://a.test/1.jpg", None, None),
        (None, "no url", "missing_url"),
    ]


def test_urls_are_stripped_and_numbers_become_text(tmp_path):
    path = write_text(tmp_path / "in.jsonl", '{"url": "  http://a.test/1.jpg\\t"}\n{"url": 12345}\n')
    assert [r.url for r in read_all(path, "jsonl")] == ["http://a.test/1.jpg", "12345"]


# ------------------------------------------------------------------- malformed rows


def test_malformed_jsonl_lines_are_rows_with_an_error(tmp_path):
    text = '{"url": "http://a.test/1.jpg"}\n{"url": broken\n[1, 2]\n\n{"url": "http://a.test/2.jpg"}\n'
    rows = read_all(write_text(tmp_path / "in.jsonl", text), "jsonl")
    assert [(r.url, r.error) for r in rows] == [
        ("http://a.test/1.jpg", None),
        (None, "malformed_row"),
        (None, "malformed_row"),
        ("http://a.test/2.jpg", None),
    ]


def test_malformed_jsonl_lines_before_the_first_object_keep_their_place(tmp_path):
    text = 'not json\n{"url": "http://a.test/1.jpg"}\n'
    rows = read_all(write_text(tmp_path / "in.jsonl", text), "jsonl")
    assert [(r.url, r.error) for r in rows] == [(None, "malformed_row"), ("http://a.test/1.jpg", None)]


def test_a_json_array_file_is_an_input_error(tmp_path):
    path = write_text(tmp_path / "in.json", '[{"url": "http://a.test/1.jpg"}]\n')
    with pytest.raises(InputError, match="JSON array"):
        read_all(path, "jsonl")


def test_csv_rows_with_wrong_column_count_are_malformed_alone(tmp_path):
    text = (
        "url,caption\nhttp://a.test/1.jpg,one\nhttp://a.test/2.jpg,two,extra\n"
        "http://a.test/3.jpg\nhttp://a.test/4.jpg,four\n"
    )
    rows = read_all(write_text(tmp_path / "in.csv", text), "csv")
    assert [(r.url, r.caption, r.error) for r in rows] == [
        ("http://a.test/1.jpg", "one", None),
        (None, None, "malformed_row"),
        (None, None, "malformed_row"),
        ("http://a.test/4.jpg", "four", None),
    ]


def test_csv_row_with_invalid_utf8_is_rejected_alone(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"url,caption\nhttp://a.test/1.jpg,caf\xe9\nhttp://a.test/2.jpg,ok\n")
    assert [(r.url, r.error) for r in read_all(path, "csv")] == [
        (None, "bad_encoding"),
        ("http://a.test/2.jpg", None),
    ]


@pytest.mark.parametrize(
    "fmt, content",
    [
        ("jsonl", b'{"url": "http://a.test/1.jpg", "caption": "caf\xe9"}\n{"url": "http://a.test/2.jpg"}\n'),
        ("txt", b"http://a.test/\xff.jpg\nhttp://a.test/2.jpg\n"),
    ],
)
def test_lines_with_invalid_utf8_are_rejected_alone(tmp_path, fmt, content):
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(content)
    assert [(r.url, r.error) for r in read_all(path, fmt)] == [(None, "bad_encoding"), ("http://a.test/2.jpg", None)]


# ------------------------------------------------------------------- CSV / TSV details


def test_csv_quoting_with_embedded_newlines_commas_and_quotes(tmp_path):
    text = 'url,caption\nhttp://a.test/1.jpg,"line one\nline two, with ""quotes"""\nhttp://a.test/2.jpg,plain\n'
    rows = read_all(write_text(tmp_path / "in.csv", text), "csv")
    assert [(r.url, r.caption) for r in rows] == [
        ("http://a.test/1.jpg", 'line one\nline two, with "quotes"'),
        ("http://a.test/2.jpg", "plain"),
    ]


def test_tsv_with_quotes_like_img2dataset(tmp_path):
    # CC3M-style: caption first, quotes inside unquoted fields are literal, quoted fields may hold tabs.
    text = 'caption\turl\na "so-called" cat\thttp://a.test/1.jpg\n"tab\tinside"\thttp://a.test/2.jpg\n'
    rows = read_all(write_text(tmp_path / "in.tsv", text), "tsv")
    assert [(r.url, r.caption) for r in rows] == [
        ("http://a.test/1.jpg", 'a "so-called" cat'),
        ("http://a.test/2.jpg", "tab\tinside"),
    ]


def test_very_long_csv_field(tmp_path):
    long_caption = "x" * 1_000_000  # well over the csv module's default 131072-character limit
    text = f"url,caption\nhttp://a.test/1.jpg,{long_caption}\nhttp://a.test/2.jpg,short\n"
    rows = read_all(write_text(tmp_path / "in.csv", text), "csv")
    assert [len(r.caption) for r in rows] == [1_000_000, 5]


def test_csv_blank_lines_are_not_rows(tmp_path):
    text = "\nurl,caption\n\nhttp://a.test/1.jpg,one\n\n"
    assert [r.url for r in read_all(write_text(tmp_path / "in.csv", text), "csv")] == ["http://a.test/1.jpg"]


@pytest.mark.parametrize("fmt", ("csv", "jsonl", "txt"))
def test_utf8_bom_is_ignored(tmp_path, fmt):
    text = {
        "csv": "url,caption\nhttp://a.test/1.jpg,caf\u00e9\n",
        "jsonl": '{"url": "http://a.test/1.jpg", "caption": "caf\u00e9"}\n',
        "txt": "http://a.test/1.jpg\n",
    }[fmt]
    rows = read_all(write_text(tmp_path / f"in.{fmt}", text, encoding="utf-8-sig"), fmt)
    assert [r.url for r in rows] == ["http://a.test/1.jpg"]  # the url column was found despite the BOM
    assert rows[0].caption == (None if fmt == "txt" else "caf\u00e9")


# ------------------------------------------------------------------- txt, empty files, compression


def test_txt_one_url_per_line_blank_lines_skipped(tmp_path):
    path = write_text(tmp_path / "in.txt", "http://a.test/1.jpg\n\n   \n  http://a.test/2.jpg  \r\nhttp://a.test/3.jpg")
    assert read_all(path, "txt") == [
        InputRow("http://a.test/1.jpg", None, {}),
        InputRow("http://a.test/2.jpg", None, {}),
        InputRow("http://a.test/3.jpg", None, {}),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_file_has_no_rows(tmp_path, fmt):
    path = tmp_path / f"empty.{fmt}"
    path.write_bytes(b"")
    assert read_all(path, fmt) == []
    check_input(str(path), fmt, "url", "caption")


@pytest.mark.parametrize(
    "name, fmt", [("in.csv.gz", "csv"), ("in.jsonl.gz", "jsonl"), ("in.tsv.bz2", "tsv"), ("in.txt.zst", "txt")]
)
def test_compressed_text_inputs(tmp_path, name, fmt):
    text = {
        "csv": delimited_text(ROWS, ","),
        "tsv": delimited_text(ROWS, "\t"),
        "jsonl": "".join(json.dumps(row) + "\n" for row in ROWS),
        "txt": "".join(row["url"] + "\n" for row in ROWS),
    }[fmt]
    path = write_text(tmp_path / name, text)
    assert detect_format(str(path)) == fmt
    rows = read_all(path, fmt)
    assert [r.url for r in rows] == [row["url"] for row in ROWS]
    if fmt != "txt":
        assert rows[1].caption == "second, with a comma"
        assert rows[1].extra == {"uid": "u2", "license": "cc0"}


def test_truncated_gzip_is_an_input_error(tmp_path):
    path = tmp_path / "in.csv.gz"
    text = "url\n" + "".join(f"http://a.test/{i}.jpg\n" for i in range(10_000))
    compressed = gzip.compress(text.encode())
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(InputError, match="in.csv.gz"):
        read_all(path, "csv")


# ------------------------------------------------------------------- Parquet


def test_parquet_row_groups_are_read_in_order(tmp_path):
    path = tmp_path / "in.parquet"
    table = pa.table({"url": [f"http://a.test/{i}.jpg" for i in range(9)], "caption": [f"c{i}" for i in range(9)]})
    pq.write_table(table, path, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 3
    assert [r.url for r in read_all(path, "parquet")] == [f"http://a.test/{i}.jpg" for i in range(9)]


def test_parquet_values_become_json_friendly(tmp_path):
    path = tmp_path / "in.parquet"
    table = pa.table(
        {
            "url": ["http://a.test/1.jpg"],
            "caption": ["c"],
            "taken": pa.array([datetime.datetime(2024, 5, 6, 7, 8, 9)], pa.timestamp("us")),
            "day": pa.array([datetime.date(2024, 5, 6)]),
            "blob": pa.array([b"\x00\xff"]),
            "price": pa.array([decimal.Decimal("1.25")], pa.decimal128(5, 2)),
            "score": pa.array([float("nan")]),
            "tags": pa.array([["a", "b"]]),
            "meta": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())),
            "width": pa.array([640], pa.int32()),
        }
    )
    pq.write_table(table, path)
    [row] = read_all(path, "parquet")
    assert row.extra == {
        "taken": "2024-05-06T07:08:09",
        "day": "2024-05-06",
        "blob": "AP8=",
        "price": "1.25",
        "score": None,
        "tags": ["a", "b"],
        "meta": {"k": 1},
        "width": 640,
    }
    json.dumps(row.extra, allow_nan=False)  # strictly JSON-serialisable


def test_parquet_numeric_url_and_non_string_caption(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"url": [7], "caption": [1.5]}), path)
    assert read_all(path, "parquet") == [InputRow("7", "1.5", {})]


def test_not_a_parquet_file_is_an_input_error(tmp_path):
    path = write_text(tmp_path / "in.parquet", "url,caption\nhttp://a.test/1.jpg,x\n")
    with pytest.raises(InputError, match="in.parquet"):
        read_all(path, "parquet")


# ------------------------------------------------------------------- streaming


class CountingReader:
    """Wraps an opened file and counts the bytes handed out by read()."""

    def __init__(self, handle):
        self.handle = handle
        self.bytes_read = 0

    def read(self, size=-1):
        data = self.handle.read(size)
        self.bytes_read += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.close()


@pytest.fixture
def opened(monkeypatch):
    """The readers opened through FileSystems.open during the test, each counting its bytes read."""
    readers: list[CountingReader] = []
    real_open = FileSystems.open

    def counting_open(path, *args, **kwargs):
        readers.append(CountingReader(real_open(path, *args, **kwargs)))
        return readers[-1]

    monkeypatch.setattr(FileSystems, "open", staticmethod(counting_open))
    return readers


@pytest.mark.parametrize(
    "name, fmt", [("big.csv", "csv"), ("big.csv.gz", "csv"), ("big.jsonl", "jsonl"), ("big.txt", "txt")]
)
def test_first_row_of_a_big_text_file_reads_only_its_start(tmp_path, opened, name, fmt):
    count = 200_000
    line = {
        "csv": "http://a.test/{i}.jpg,caption {i}\n",
        "jsonl": '{{"url": "http://a.test/{i}.jpg", "caption": "caption {i}"}}\n',
        "txt": "http://a.test/{i}.jpg\n",
    }[fmt]
    header = "url,caption\n" if fmt == "csv" else ""
    text = header + "".join(line.format(i=i) for i in range(count))
    write_text(tmp_path / name, text)

    rows = read_rows(str(tmp_path / name), fmt)
    assert next(rows).url == "http://a.test/0.jpg"
    assert opened[0].bytes_read < 1_000_000 < len(text) / 4
    assert sum(1 for _ in rows) == count - 1  # the counting wrapper does not break a full read


def test_first_row_of_a_big_parquet_file_reads_one_row_group(tmp_path, opened):
    path = tmp_path / "big.parquet"
    count = 200_000
    urls = [f"http://a.test/{i}/{i * 7919 % 100003}.jpg" for i in range(count)]
    pq.write_table(pa.table({"url": urls}), path, row_group_size=count // 10)

    rows = read_rows(str(path), "parquet")
    assert next(rows).url == urls[0]
    assert opened[0].bytes_read < path.stat().st_size / 3
    assert [r.url for r in rows] == urls[1:]


# ------------------------------------------------------------------- formats and listing


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("a.parquet", "parquet"),
        ("gs://bucket/dir/a.CSV", "csv"),
        ("a.tsv", "tsv"),
        ("a.jsonl", "jsonl"),
        ("a.json", "jsonl"),
        ("a.ndjson.bz2", "jsonl"),
        ("a.txt.zst", "txt"),
        ("a.csv.gz", "csv"),
    ],
)
def test_detect_format_by_extension(name, fmt):
    assert detect_format(name) == fmt


def test_detect_format_override_wins():
    assert detect_format("a.csv", "tsv") == "tsv"
    assert detect_format("part-00000", "parquet") == "parquet"


@pytest.mark.parametrize("name", ["a.xlsx", "a", "a.gz", "a.parquet.gz"])
def test_detect_format_unknown(name):
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        detect_format(name)


def test_detect_format_rejects_an_unknown_override():
    with pytest.raises(InputError, match="xml"):
        detect_format("a.csv", "xml")


def _touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_text("url\n")


def test_expand_a_directory_lists_known_formats_sorted(tmp_path):
    _touch(tmp_path, "b.csv", "a.parquet", "c.jsonl.gz", "_SUCCESS", "notes.md")
    (tmp_path / "sub").mkdir()
    _touch(tmp_path / "sub", "d.csv")
    expected = [str(tmp_path / n) for n in ("a.parquet", "b.csv", "c.jsonl.gz")]
    assert expand_inputs(str(tmp_path)) == expected
    assert expand_inputs(str(tmp_path) + "/") == expected


def test_expand_a_glob_is_sorted(tmp_path):
    _touch(tmp_path, "part-2.csv", "part-10.csv", "part-1.csv", "other.csv")
    assert expand_inputs(str(tmp_path / "part-*.csv")) == [
        str(tmp_path / n) for n in ("part-1.csv", "part-10.csv", "part-2.csv")
    ]


def test_expand_a_single_file(tmp_path):
    _touch(tmp_path, "a.csv", "b.csv")
    assert expand_inputs(str(tmp_path / "a.csv")) == [str(tmp_path / "a.csv")]


@pytest.mark.parametrize("pattern", ["missing.csv", "*.parquet", "empty_dir"])
def test_expand_nothing_matches(tmp_path, pattern):
    (tmp_path / "empty_dir").mkdir()
    _touch(tmp_path, "a.csv")
    with pytest.raises(InputError, match="no input files match"):
        expand_inputs(str(tmp_path / pattern))


# ------------------------------------------------------------------- pre-flight check


def test_check_input_accepts_a_good_file(tmp_path):
    for fmt in TABLE_FORMATS:
        check_input(str(write_rows(tmp_path, fmt, ROWS)), fmt, "url", "caption")


def test_check_input_missing_url_column(tmp_path):
    path = write_rows(tmp_path, "parquet", ROWS)
    with pytest.raises(InputError, match="no url column 'link'"):
        check_input(str(path), "parquet", "link", "caption")


def test_check_input_bad_parquet(tmp_path):
    path = tmp_path / "in.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(InputError, match="in.parquet"):
        check_input(str(path), "parquet", "url", "caption")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "latin-1"])
def test_check_input_header_not_utf8(tmp_path, encoding):
    path = write_text(tmp_path / "in.csv", "url,caption\u00e9\nhttp://a.test/1.jpg,caf\u00e9\n", encoding=encoding)
    with pytest.raises(InputError, match="not UTF-8|NUL bytes") as raised:
        check_input(str(path), "csv", "url", "caption")
    assert "in.csv" in str(raised.value)


def test_check_input_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.csv"):
        check_input(str(tmp_path / "nope.csv"), "csv", "url", "caption")
