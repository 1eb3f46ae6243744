"""Image-text pairs from the same WAT file: curate vs cc2dataset (the extractor LAION used), by edge case.

    .venv/bin/python benchmarks/crawl_vs_cc2dataset.py            # prints the table
    .venv/bin/python benchmarks/crawl_vs_cc2dataset.py --check    # exit 1 if benchmarks/README.md's table differs

The pages are tests/crawl_files.py's SAME_PAGES (each one an edge case seen on
real pages, written as Common Crawl's WAT generator writes them).  curate reads
them in LAION's mode (`crawl.skip_empty_alt: true`, no title fallback).

cc2dataset is NOT run: `pip install cc2dataset` (1.5.0) pulls pyspark, spacy
and yt-dlp, and its module imports pyspark and yt_dlp on import, too heavy for
this benchmark's machine.  `cc2dataset_pairs` below is a RE-STATEMENT of the
rules of its `extract_documents_from_wat` in "image" mode, written from reading
rom1504/cc2dataset (cc2dataset/main.py), not its code:

  1. only WARC `metadata` records; a record that is not JSON is skipped;
  2. a record without Envelope -> Payload-Metadata -> HTTP-Response-Metadata ->
     HTML-Metadata -> Links is skipped (a record without "Envelope", or a link
     without "url", raises outside the per-record guard: the whole file gives no pairs);
  3. base URL: urljoin(WARC-Target-URI, Head.Base) when Base is there;
  4. links with path "IMG@/src" and a non-empty alt (raw: " " counts);
  5. a URL starting with "http://" or "https://" is kept verbatim (fragment
     included); any other is urljoin(base, url);
  6. only URLs starting with "http://" or "https://" are kept;
  7. pairs are unique by md5(alt + url); the alt is kept raw, no language, no title.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from urllib.parse import urljoin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from warcio.archiveiterator import ArchiveIterator  # noqa: E402

from pipeline.ingest.crawl import CrawlParams  # noqa: E402
from pipeline.ingest.readers import read_rows  # noqa: E402
from tests.crawl_files import SAME_PAGES, write_archive  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"
TABLE_START = "<!-- crawl_vs_cc2dataset table: generated, do not edit -->"
TABLE_END = "<!-- end of crawl_vs_cc2dataset table -->"
LAION_MODE = CrawlParams(skip_empty_alt=True)


def cc2dataset_pairs(wat_path: Path) -> list[tuple[str, str]]:
    """cc2dataset's pairs from one uncompressed WAT file: the re-stated rules of the module docstring."""
    pairs, seen = [], set()
    try:
        with open(wat_path, "rb") as stream:
            for record in ArchiveIterator(stream):
                if record.rec_type != "metadata":
                    continue
                try:
                    document = json.loads(record.content_stream().read())
                except ValueError:
                    continue  # rule 1
                for url, alt in _record_pairs(document):
                    uid = hashlib.md5((alt + url).encode()).hexdigest()
                    if uid not in seen:  # rule 7
                        seen.add(uid)
                        pairs.append((url, alt))
    except (KeyError, TypeError):
        return []  # rule 2: the whole file is lost
    return pairs


def _record_pairs(document: dict) -> list[tuple[str, str]]:
    envelope = document["Envelope"]
    response = envelope["Payload-Metadata"].get("HTTP-Response-Metadata", {})
    links = response.get("HTML-Metadata", {}).get("Links")
    if links is None:
        return []
    base = envelope["WARC-Header-Metadata"]["WARC-Target-URI"]
    head = response["HTML-Metadata"].get("Head", {})
    if "Base" in head:
        try:
            base = urljoin(base, head["Base"])  # rule 3
        except ValueError:
            pass
    images = [(link["url"], link["alt"]) for link in links if link.get("path") == "IMG@/src" and link.get("alt")]
    absolute = [(_absolute(url, base), alt) for url, alt in images]  # rules 4, 5
    return [(url, alt) for url, alt in absolute if url.startswith(("http://", "https://"))]  # rule 6


def _absolute(url: str, base: str) -> str:
    if url.startswith(("http://", "https://")):
        return url
    try:
        return urljoin(base, url)
    except ValueError:
        return url


def curate_pairs(wat_path: Path) -> list[tuple[str, str]]:
    return [(row.url, row.caption) for row in read_rows(str(wat_path), "wat", crawl_params=LAION_MODE)]


def compare(directory: Path) -> list[tuple[str, list, list, int]]:
    """Per page: (case, pairs only curate extracts, pairs only cc2dataset extracts, pairs both extract)."""
    results = []
    for index, same_page in enumerate(SAME_PAGES):
        wat = write_archive(directory / f"{index}.wat", [same_page.wat_record()], compress=False)
        ours, theirs = curate_pairs(wat), cc2dataset_pairs(wat)
        results.append((same_page.case, _missing(ours, theirs), _missing(theirs, ours), len(set(ours) & set(theirs))))
    return results


def _missing(these: list, those: list) -> list:
    return [pair for pair in these if pair not in those]


def table(results: list[tuple[str, list, list, int]]) -> str:
    lines = [
        "| edge case (page) | both | only curate | only cc2dataset (re-stated) |",
        "|---|---|---|---|",
    ]
    for case, only_ours, only_theirs, both in results:
        lines.append(f"| `{case}` | {both} | {_cell(only_ours)} | {_cell(only_theirs)} |")
    both = sum(r[3] for r in results)
    ours = sum(len(r[1]) for r in results)
    theirs = sum(len(r[2]) for r in results)
    lines.append(f"| **total** | **{both}** | **{ours}** | **{theirs}** |")
    return "\n".join(lines)


def _cell(pairs: list) -> str:
    if not pairs:
        return "-"
    # JSON strings, so that spaces and control characters in a URL or caption show
    return "<br>".join(
        f"{json.dumps(url, ensure_ascii=False)} {json.dumps(caption, ensure_ascii=False)}".replace("|", "\\|")
        for url, caption in pairs
    )


def readme_table() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index(TABLE_START) + len(TABLE_START):text.index(TABLE_END)].strip()


def main() -> int:
    with tempfile.TemporaryDirectory() as directory:
        generated = table(compare(Path(directory)))
    if sys.argv[1:] == ["--check"]:
        if generated != readme_table():
            print("benchmarks/README.md's crawl_vs_cc2dataset table is out of date; it should be:\n" + generated)
            return 1
        return 0
    print(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
