"""Every physical line of a text input is accounted for: blank, header, one row, or one line of a bounded
multi-line CSV record.  Hostile inputs (unclosed quotes, NUL bytes, CR line ends, huge or nested lines,
bad bytes, truncated compressed files) cost the lines they are on, never the rest of the file."""
from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import pytest
import zstandard

from pipeline.engine import audit

from pipeline.ingest import textlines
from pipeline.ingest.input_files import InputError, InputRow
from pipeline.ingest.readers import check_input, read_rows
from pipeline.ingest.textlines import FileTally


def read_counted(path: Path, fmt: str) -> tuple[list[InputRow], dict]:
    tally = FileTally()
    rows = list(read_rows(str(path), fmt, tally=tally))
    summary = tally.summary(str(path), fmt)
    assert summary["rows"] == len(rows)
    assert summary["physical_records"] == tally.records_in_rows()  # every record in exactly one row
    return rows, summary


def errors(rows: list[InputRow]) -> list[str | None]:
    return [row.error for row in rows]


def csv_lines(count: int) -> list[str]:
    return ["url,caption"] + [f"http://host/{i}.jpg,caption {i}" for i in range(count)]


# ------------------------------------------------------------------- unclosed quotes


def test_an_unclosed_quote_costs_its_line_not_the_rest_of_the_file(tmp_path):
    lines = csv_lines(200)
    lines[1 + 4] = 'http://host/4.jpg,"quoted start of caption'
    path = tmp_path / "in.csv"
    path.write_text("\n".join(lines) + "\n")
    rows, summary = read_counted(path, "csv")
    assert len(rows) == 200
    assert errors(rows) == [None] * 4 + ["malformed_row"] + [None] * 195
    assert [row.url for row in rows[5:]] == [f"http://host/{i}.jpg" for i in range(5, 200)]
    assert rows[5].caption == "caption 5"
    assert summary["physical_records"] == 200 and summary["rejected_at_read"] == {"malformed_row": 1}


def test_an_unclosed_quote_closed_by_a_later_quote_does_not_swallow_the_lines_between(tmp_path):
    # Without the bound, row 4's field would run to the quote on row 6 and the record would look whole.
    text = 'url,caption\nhttp://h/4.jpg,"open ""quote\nhttp://h/5.jpg,five\nhttp://h/6.jpg,"six"\n'
    rows, _ = read_counted(_write(tmp_path / "in.csv", text), "csv")
    assert [(row.url, row.error) for row in rows] == [
        (None, "malformed_row"),
        ("http://h/5.jpg", None),
        ("http://h/6.jpg", None),
    ]


def test_tsv_unclosed_quote_in_a_caption_first_file(tmp_path):
    lines = ["caption\turl"] + [f"caption {i}\thttp://h/{i}.jpg" for i in range(10)]
    lines[1 + 2] = '"open caption\thttp://h/2.jpg'
    rows, _ = read_counted(_write(tmp_path / "in.tsv", "\n".join(lines) + "\n"), "tsv")
    assert errors(rows) == [None, None, "malformed_row"] + [None] * 7
    assert rows[3].url == "http://h/3.jpg"


def test_a_quote_still_open_at_the_end_of_the_file(tmp_path):
    text = 'url,caption\nhttp://h/1.jpg,one\nhttp://h/2.jpg,"open\nstray text\n'
    rows, summary = read_counted(_write(tmp_path / "in.csv", text), "csv")
    assert [(row.url, row.error) for row in rows] == [
        ("http://h/1.jpg", None),
        (None, "malformed_row"),  # the line with the open quote
        (None, "malformed_row"),  # "stray text": one field where the header has two
    ]
    assert summary["physical_records"] == 3


def test_a_quoted_field_may_not_span_more_than_the_line_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(textlines, "MAX_SPAN_LINES", 5)
    text = 'url,caption\nhttp://h/1.jpg,"long\n' + "".join(f"verse {i}\n" for i in range(8)) + 'end"\n'
    rows, summary = read_counted(_write(tmp_path / "in.csv", text), "csv")
    assert errors(rows) == ["malformed_row"] * 10  # the opening line, 8 verses and `end"`, each alone
    assert summary["physical_records"] == 10 and summary["multiline_rows"] == 0


def test_a_quoted_field_may_not_span_more_than_the_character_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(textlines, "MAX_SPAN_CHARS", 100)
    text = 'url,caption\nhttp://h/1.jpg,"' + "".join("x" * 60 + "\n" for _ in range(3)) + '"\nhttp://h/2.jpg,ok\n'
    rows, _ = read_counted(_write(tmp_path / "in.csv", text), "csv")
    assert errors(rows)[0] == "malformed_row"
    assert rows[-1].url == "http://h/2.jpg"


def test_short_multi_line_captions_still_work(tmp_path):
    text = (
        'url,caption\nhttp://h/1.jpg,"Roses are red,\nviolets are blue\n\nand so, ""on"""\n'
        'http://h/2.jpg,"two\r\nlines"\nhttp://h/3.jpg,plain\n'
    )
    rows, summary = read_counted(_write(tmp_path / "in.csv", text), "csv")
    assert [(row.url, row.caption) for row in rows] == [
        ("http://h/1.jpg", 'Roses are red,\nviolets are blue\n\nand so, "on"'),
        ("http://h/2.jpg", "two\r\nlines"),
        ("http://h/3.jpg", "plain"),
    ]
    assert summary["multiline_rows"] == 2 and summary["lines_in_multiline_rows"] == 6
    assert summary["physical_records"] == 7 and summary["blank_lines"] == 0


# ------------------------------------------------------------------- other hostile lines


@pytest.mark.parametrize(
    "fmt, content, expected",
    [
        ("txt", b"http://h/1.jpg\nhttp://h/\x002.jpg\nhttp://h/3.jpg\n", [None, "malformed_row", None]),
        ("csv", b"url,caption\nhttp://h/1.jpg,a\x00b\nhttp://h/3.jpg,c\n", ["malformed_row", None]),
        ("tsv", b"url\tcaption\nhttp://h/1.jpg\ta\x00b\n", ["malformed_row"]),
        ("jsonl", b'{"url": "http://h/1.jpg"}\n{"url": "http://h/2.jpg", "c": "\x00"}\n', [None, "malformed_row"]),
    ],
)
def test_a_nul_byte_makes_its_line_malformed(tmp_path, fmt, content, expected):
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(content)
    rows, _ = read_counted(path, fmt)
    assert errors(rows) == expected


def test_deeply_nested_json_line_is_malformed_not_a_crash(tmp_path):
    text = '{"url": "http://h/1.jpg"}\n' + "[" * 100_000 + "\n" + '{"url": "http://h/3.jpg"}\n'
    rows, _ = read_counted(_write(tmp_path / "in.jsonl", text), "jsonl")
    assert errors(rows) == [None, "malformed_row", None]


@pytest.mark.parametrize(
    "line",
    ['"just a string"', "42", "null", '{"url": "http://h/2.jpg", "caption": "cut off'],
)
def test_jsonl_lines_that_are_not_objects_or_are_truncated(tmp_path, line):
    text = '{"url": "http://h/1.jpg"}\n' + line  # the last line, without a line end
    rows, summary = read_counted(_write(tmp_path / "in.jsonl", text), "jsonl")
    assert errors(rows) == [None, "malformed_row"]
    assert summary["physical_lines"] == 2


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv"])
def test_a_line_over_the_size_bound_is_one_malformed_row(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(textlines, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(textlines, "_READ_BYTES", 64)  # the long line arrives in many pieces
    good = {"txt": "http://h/{}.jpg", "jsonl": '{{"url": "http://h/{}.jpg"}}', "csv": "http://h/{},c"}[fmt]
    huge = {"txt": "http://h/" + "x" * 5000, "jsonl": '{"url": "' + "x" * 5000 + '"}', "csv": "y" * 5000 + ",c"}[fmt]
    header = "url,caption\n" if fmt == "csv" else ""
    text = header + good.format(1) + "\n" + huge + "\n" + good.format(3) + "\n"
    rows, summary = read_counted(_write(tmp_path / f"in.{fmt}", text), fmt)
    assert errors(rows) == [None, "malformed_row", None]
    assert rows[2].url.startswith("http://h/3")
    assert summary["physical_lines"] == (4 if fmt == "csv" else 3)


@pytest.mark.parametrize("read_bytes", [1, 17])
def test_an_over_long_line_ended_by_a_lone_cr_keeps_its_line_end(tmp_path, monkeypatch, read_bytes):
    # Found by the fuzzer: dropping an over-long line's bytes dropped the \r that ended it, merging two lines.
    monkeypatch.setattr(textlines, "MAX_LINE_BYTES", 16)
    monkeypatch.setattr(textlines, "_READ_BYTES", read_bytes)
    text = "http://h/1-16chr\rhttp://h/2\r\nhttp://h/3-16chr\r\nhttp://h/4\r"  # 16 bytes + a line end
    rows, summary = read_counted(_write(tmp_path / "in.txt", text), "txt")
    assert [(row.url, row.error) for row in rows] == [
        (None, "malformed_row"),
        ("http://h/2", None),
        (None, "malformed_row"),
        ("http://h/4", None),
    ]
    assert summary["physical_lines"] == 4


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "tsv"])
def test_cr_only_line_ends(tmp_path, fmt):
    good = {
        "txt": "http://h/{}.jpg",
        "jsonl": '{{"url": "http://h/{}.jpg"}}',
        "csv": "http://h/{}.jpg,c",
        "tsv": "http://h/{}.jpg\tc",
    }[fmt]
    header = {"csv": "url,caption\r", "tsv": "url\tcaption\r"}.get(fmt, "")
    text = header + "\r".join(good.format(i) for i in range(3)) + "\r"
    rows, summary = read_counted(_write(tmp_path / f"in.{fmt}", text), fmt)
    assert [row.url for row in rows] == [f"http://h/{i}.jpg" for i in range(3)]
    assert summary["physical_records"] == 3


def test_mixed_line_ends_and_blank_lines_are_counted(tmp_path):
    text = "http://h/1.jpg\r\n\r\nhttp://h/2.jpg\r\n   \nhttp://h/3.jpg\n\n"
    rows, summary = read_counted(_write(tmp_path / "in.txt", text), "txt")
    assert len(rows) == 3
    assert (summary["physical_lines"], summary["blank_lines"], summary["physical_records"]) == (6, 3, 3)


# ------------------------------------------------------------------- encodings


def test_a_bad_byte_at_the_start_is_one_bad_encoding_row_like_anywhere_else(tmp_path):
    path = tmp_path / "in.csv"
    body = b"".join(b"http://h/%d.jpg,ok\n" % i for i in range(5000))  # well past the first 64 KB
    path.write_bytes(b"url,caption\nhttp://h/a.jpg,caf\xe9\n" + body + b"http://h/z.jpg,caf\xe9\n")
    check_input(str(path), "csv", "url", "caption")  # a bad row is no reason to refuse the file
    rows, summary = read_counted(path, "csv")
    assert errors(rows) == ["bad_encoding"] + [None] * 5000 + ["bad_encoding"]
    assert summary["rejected_at_read"] == {"bad_encoding": 2}


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_mixed_encodings_cost_the_lines_they_are_on(tmp_path, fmt):
    good = '{"url": "http://h/%d.jpg"}' if fmt == "jsonl" else "http://h/%d.jpg"
    latin1 = ('{"url": "http://h/caf\u00e9.jpg"}' if fmt == "jsonl" else "http://h/caf\u00e9.jpg").encode("latin-1")
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(latin1 + b"\n" + (good % 1).encode() + b"\n" + latin1 + b"\n")
    check_input(str(path), fmt, "url", "caption")
    rows, _ = read_counted(path, fmt)
    assert errors(rows) == ["bad_encoding", None, "bad_encoding"]


@pytest.mark.parametrize(
    "fmt, content, message",
    [
        ("csv", "url,caption\nhttp://h/1.jpg,x\n".encode("utf-16"), "UTF-16"),
        ("jsonl", '{"url": "http://h/1.jpg"}\n'.encode("utf-16"), "UTF-16"),
        ("txt", gzip.compress(b"http://h/1.jpg\n"), "gzip"),
        ("csv", zstandard.ZstdCompressor().compress(b"url\nhttp://h/1.jpg\n"), "zstd"),
        ("csv", "url,caption\n".encode("utf-16-le"), "NUL"),
    ],
)
def test_a_file_that_is_not_text_stops_the_run_before_it_starts(tmp_path, fmt, content, message):
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as raised:
        check_input(str(path), fmt, "url", "caption")
    assert str(path) in str(raised.value)


def test_a_bom_is_dropped_from_the_first_line_only(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfhttp://h/1.jpg\n\xef\xbb\xbfhttp://h/2.jpg\n")
    rows, _ = read_counted(path, "txt")
    assert [row.url for row in rows] == ["http://h/1.jpg", "\ufeffhttp://h/2.jpg"]


# ------------------------------------------------------------------- compressed inputs


def _compressed(suffix: str, data: bytes) -> bytes:
    compress = {
        "gz": gzip.compress,
        "bz2": bz2.compress,
        "zst": zstandard.ZstdCompressor().compress,
        "xz": lzma.compress,
    }[suffix]
    return compress(data)


@pytest.mark.parametrize("cut", ["half", "before the first block"])
@pytest.mark.parametrize("suffix", ["gz", "bz2", "zst", "xz"])
def test_a_truncated_compressed_file_is_an_input_error_not_a_shorter_list(tmp_path, suffix, cut):
    data = "".join(f"http://h/{i}.jpg\n" for i in range(20_000)).encode()
    compressed = _compressed(suffix, data)
    path = tmp_path / f"in.txt.{suffix}"
    path.write_bytes(compressed[: len(compressed) // 2 if cut == "half" else 20])
    with pytest.raises(InputError, match="truncated"):
        list(read_rows(str(path), "txt"))


@pytest.mark.parametrize("suffix", ["gz", "bz2", "zst", "xz"])
def test_concatenated_compressed_streams_are_read_whole(tmp_path, suffix):
    path = tmp_path / f"in.txt.{suffix}"
    path.write_bytes(_compressed(suffix, b"http://h/1.jpg\n") + _compressed(suffix, b"http://h/2.jpg\n"))
    rows, _ = read_counted(path, "txt")
    assert [row.url for row in rows] == ["http://h/1.jpg", "http://h/2.jpg"]


@pytest.mark.parametrize("suffix", ["gz", "zst"])
def test_an_empty_compressed_file_is_an_empty_list(tmp_path, suffix):
    path = tmp_path / f"in.txt.{suffix}"
    path.write_bytes(b"")
    assert read_counted(path, "txt")[0] == []


# ------------------------------------------------------------------- the audit's inputs


def test_parquet_and_csv_tallies(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": ["http://h/1.jpg", None]}), tmp_path / "in.parquet")
    rows, summary = read_counted(tmp_path / "in.parquet", "parquet")
    assert summary["physical_records"] == 2 and summary["physical_lines"] is None
    assert summary["rejected_at_read"] == {"missing_url": 1}
    rows, summary = read_counted(_write(tmp_path / "in.csv", "\nurl\n\nhttp://h/1.jpg\n"), "csv")
    assert (summary["physical_lines"], summary["blank_lines"], summary["header_lines"]) == (4, 2, 1)


def _audit_with(inputs: list[dict], read_rejects: dict[str, int], kept: int) -> dict:
    counts = {"kept": kept, **{f"rejected/read/{reason}": n for reason, n in read_rejects.items()}}
    rows = kept + sum(read_rejects.values())
    return audit.build_audit(rows, counts, [], ["read"], {}, inputs)


def _entry(path: str, physical_records: int, rows: int, rejected: dict[str, int]) -> dict:
    tally = FileTally(physical_records=physical_records, rows=rows, rejected_at_read=rejected)
    return tally.summary(path, "parquet")


def test_audit_lists_inputs_and_accepts_true_accounting():
    entry = _entry("a.parquet", 3, 3, {"missing_url": 1})
    result = _audit_with([entry], {"missing_url": 1}, kept=2)
    assert result["inputs"] == [entry]
    audit.check_accounting(result)


@pytest.mark.parametrize(
    "entry, message",
    [
        (_entry("a.parquet", 5, 3, {"missing_url": 1}), "5 physical records but 3"),  # two records lost
        (_entry("a.parquet", 4, 4, {"missing_url": 1}), "gave 4 rows"),  # a row the run did not count
        (_entry("a.parquet", 3, 3, {}), "read rejects"),
    ],
)
def test_audit_refuses_inputs_that_do_not_add_up(entry, message):
    with pytest.raises(audit.AccountingError, match=message):
        audit.check_accounting(_audit_with([entry], {"missing_url": 1}, kept=2))


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path
