"""Rebuild filters/data/balance_entries.txt, the `balance` stage's default metadata entries.

Source: the English word list of `wordfreq` 3.1.1 (PyPI; its data is
CC-BY-SA 4.0, built from Wikipedia, subtitles, news, books, web text, Twitter
and Reddit), most frequent first.  Kept: the first ENTRIES words made only of
letters (no digits, apostrophes or dots), in wordfreq's order.  Stop words
stay, as in MetaCLIP's metadata (Wikipedia unigrams include "the"): their huge
counts are what balancing caps.

    pip install wordfreq==3.1.1
    python benchmarks/build_balance_entries.py            # writes the file
    python benchmarks/build_balance_entries.py --check    # exit 1 if the file differs

The released MetaCLIP metadata (500k entries: WordNet synsets, Wikipedia
unigrams, bigrams and page titles) is a better list for real pools: see the
`balance` section of filters/data/README.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ENTRIES = 20000
WORDFREQ_VERSION = "3.1.1"
OUTPUT = Path(__file__).resolve().parent.parent / "filters" / "data" / "balance_entries.txt"
HEADER = (
    f"# Default metadata entries of the `balance` stage: the {ENTRIES} most frequent English words\n"
    f"# made only of letters, from wordfreq {WORDFREQ_VERSION} (CC-BY-SA 4.0). Built by\n"
    "# benchmarks/build_balance_entries.py; see filters/data/README.md.\n"
)


def build_entries(count: int = ENTRIES) -> list[str]:
    import wordfreq

    words = [word for word in wordfreq.top_n_list("en", count * 2) if word.isalpha()]
    if len(words) < count:
        raise SystemExit(f"wordfreq listed only {len(words)} alphabetic words")
    return words[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    args = parser.parse_args(argv)
    text = HEADER + "".join(f"{word}\n" for word in build_entries())
    if args.check:
        same = OUTPUT.read_text(encoding="utf-8") == text
        print(f"{OUTPUT}: {'up to date' if same else 'DIFFERS'}")
        return 0 if same else 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT} ({ENTRIES} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
