"""Property tests (hypothesis): random mixtures of good and bad lines in each text format.

Each generated file is a list of items whose outcome is known (a row, a reject
with its reason, or a blank line); the reader must give exactly those rows in
order, account for every physical line, and give the same result when read twice.
"""
from __future__ import annotations

import gzip

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest.readers import read_rows
from pipeline.ingest.textlines import FileTally

# (line template, the rows it gives: (error, physical lines) each); "{i}" is the item's number, "\n" its line end.
DELIMITED_ITEMS = [
    ("http://h/{i}.jpg,caption {i}\n", [(None, 1)]),
    (b"http://h/{i}.jpg,caf\xe9\n", [("bad_encoding", 1)]),
    ("http://h/{i}.jpg,a\x00b\n", [("malformed_row", 1)]),
    ("a,b,c\n", [("malformed_row", 1)]),
    (",no url\n", [("missing_url", 1)]),
    ("\n", []),
    ('http://h/{i}.jpg,"one\ntwo, ""2"""\n', [(None, 2)]),
    ('http://h/{i}.jpg,"unclosed {i}\n', [("malformed_row", 1)]),
]
JSONL_ITEMS = [
    ('{{"url": "http://h/{i}.jpg", "caption": "c {i}"}}\n', [(None, 1)]),
    (b'{"url": "http://h/caf\xe9.jpg"}\n', [("bad_encoding", 1)]),
    ('{{"url": "http://h/{i}.jpg", "caption": "a\x00b"}}\n', [("malformed_row", 1)]),
    ('{{"caption": "no url {i}"}}\n', [("missing_url", 1)]),
    ("42\n", [("malformed_row", 1)]),
    ('{{"url": "http://h/{i}.jpg", "cut\n', [("malformed_row", 1)]),
    ("[" * 5000 + "\n", [("malformed_row", 1)]),
    ("  \n", []),
]
TXT_ITEMS = [
    ("http://h/{i}.jpg\n", [(None, 1)]),
    (b"http://h/caf\xe9.jpg\n", [("bad_encoding", 1)]),
    ("http://h/\x00{i}.jpg\n", [("malformed_row", 1)]),
    (" \t\n", []),
]
ITEMS = {"csv": DELIMITED_ITEMS, "tsv": DELIMITED_ITEMS, "jsonl": JSONL_ITEMS, "txt": TXT_ITEMS}
HEADERS = {"csv": "url,caption\n", "tsv": "url\tcaption\n"}
# JSON Lines takes its url column from the first object, so the file starts with a good one.
FIRST_ITEMS = {"jsonl": [JSONL_ITEMS[0]]}


def render(fmt: str, picks: list[int], line_end: str) -> tuple[bytes, list[tuple[str | None, int]]]:
    items = FIRST_ITEMS.get(fmt, []) + [ITEMS[fmt][pick] for pick in picks]
    text, expected = HEADERS.get(fmt, "").encode(), []
    for number, (template, rows) in enumerate(items):
        line = template.format(i=number).encode() if isinstance(template, str) else template
        if fmt == "tsv":
            line = line.replace(b",", b"\t")
        text += line
        expected += rows
    return text.replace(b"\n", line_end.encode()), expected


def read_twice(path, fmt):
    results = []
    for _ in range(2):
        tally = FileTally()
        rows = list(read_rows(str(path), fmt, tally=tally))
        results.append((rows, tally.summary(str(path), fmt), tally.records_in_rows()))
    assert results[0] == results[1]
    return results[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(sorted(ITEMS)),
    picks=st.lists(st.integers(min_value=0, max_value=7), max_size=30),
    line_end=st.sampled_from(["\n", "\r\n", "\r"]),
    compressed=st.booleans(),
    last_line_end=st.booleans(),
)
def test_every_physical_record_is_one_row_or_one_reject(tmp_path, fmt, picks, line_end, compressed, last_line_end):
    picks = [pick % len(ITEMS[fmt]) for pick in picks]
    content, expected = render(fmt, picks, line_end)
    if not last_line_end and content.endswith(line_end.encode()):
        content = content[: -len(line_end)]
    path = tmp_path / f"in.{fmt}{'.gz' if compressed else ''}"
    path.write_bytes(gzip.compress(content) if compressed else content)

    rows, summary, records_in_rows = read_twice(path, fmt)

    assert [row.error for row in rows] == [error for error, _ in expected]
    assert summary["lines_in_multiline_rows"] == sum(lines for _, lines in expected if lines > 1)
    assert summary["physical_lines"] == len(content.splitlines())  # \n, \r\n and \r, as the reader counts
    assert summary["physical_records"] == records_in_rows == sum(lines for _, lines in expected)
    assert all(row.url for row in rows if row.error is None)
