"""The user's opt-out list: one `kind:value` rule per line, parsed, checked and indexed for matching.

A text file with one `kind:value` rule per line (`#` starts a comment line,
blank lines are skipped), or a CSV or Parquet file with columns `kind,value`:

    domain:example.com                  the host and all its subdomains
    url:https://example.com/a/b.jpg     exactly this URL (after normalisation)
    prefix:https://example.com/gallery/ every URL starting with this (after normalisation)
    sha256:<64 hex digits>              the original downloaded bytes
    phash:<16 hex digits>               str(imagehash.phash(image)); matches within
                                        the stage's Hamming distance

URLs are compared after `pipeline.media.optout.urls.normalize_url`; pHashes of
stored images come from `pipeline.media.optout.phash.phash_of_image`.
"""
from __future__ import annotations

import collections
import csv
import io
import re
import string
import urllib.parse
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from pipeline.media.optout.urls import is_ip_address, normalize_host, normalize_url

KINDS = ("domain", "url", "prefix", "sha256", "phash")

_MAX_ERRORS_SHOWN = 10
_HOST_LABELS = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


class OptOutListError(ValueError):
    """The opt-out list cannot be read; the message names the file and lines."""


@dataclass(frozen=True)
class Rule:
    kind: str
    value: str  # normalised

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def parse_rule(kind: str, value: str) -> Rule:
    """One `kind:value` rule, normalised; ValueError says what is wrong."""
    kind, value = kind.strip().lower(), value.strip()
    if not kind:
        raise ValueError(f"expected kind:value, got {value!r}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not value:
        raise ValueError(f"empty {kind} value")
    return Rule(kind, _VALUE_PARSERS[kind](value))


def _parse_domain(value: str) -> str:
    if "://" in value or "/" in value:
        raise ValueError(f"domain {value!r} is not a bare host name (write e.g. domain:example.com, or use prefix:)")
    host = normalize_host(value.removeprefix("*."))
    if not (_HOST_LABELS.match(host) or is_ip_address(host.strip("[]"))):
        raise ValueError(f"domain {value!r} is not a valid host name")
    return host.strip("[]")


def _parse_url(value: str) -> str:
    normalized = normalize_url(value)
    if normalized is None:
        raise ValueError(f"{value!r} is not an absolute http(s) URL")
    return normalized


def _parse_hex(digits: int, name: str):
    def parse(value: str) -> str:
        value = value.lower()
        if len(value) != digits or any(c not in string.hexdigits for c in value):
            raise ValueError(f"{name} must be {digits} hex digits, got {value!r}")
        return value

    return parse


_VALUE_PARSERS = {
    "domain": _parse_domain,
    "url": _parse_url,
    "prefix": _parse_url,
    "sha256": _parse_hex(64, "sha256"),
    "phash": _parse_hex(16, "phash (64-bit imagehash.phash, as str(hash))"),
}


@dataclass(frozen=True)
class PhashMatch:
    rule: Rule
    distance: int


class OptOutList:
    """Rules indexed for fast matching: sets for exact kinds, per-host prefix lists."""

    def __init__(self, rules: Iterable[Rule] = ()):
        self.rules = list(dict.fromkeys(rules))
        by_kind: dict[str, list[str]] = {kind: [] for kind in KINDS}
        for rule in self.rules:
            by_kind[rule.kind].append(rule.value)
        self._domains = frozenset(by_kind["domain"])
        self._urls = frozenset(by_kind["url"])
        self._sha256 = frozenset(by_kind["sha256"])
        self._prefixes: dict[str, list[str]] = collections.defaultdict(list)
        for prefix in by_kind["prefix"]:
            self._prefixes[urllib.parse.urlsplit(prefix).hostname or ""].append(prefix)
        self._phash_values = by_kind["phash"]
        self._phashes = np.array([int(value, 16) for value in self._phash_values], dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.rules)

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(rule.kind for rule in self.rules))

    @property
    def has_url_rules(self) -> bool:
        return bool(self._domains or self._urls or self._prefixes)

    @property
    def has_sha256(self) -> bool:
        return bool(self._sha256)

    @property
    def has_phash(self) -> bool:
        return bool(self._phash_values)

    def match_url(self, url: str | None) -> Rule | None:
        """The first url, prefix or domain rule matching `url` (checked in that order)."""
        normalized = normalize_url(url or "")
        if normalized is None:
            return None
        if normalized in self._urls:
            return Rule("url", normalized)
        host = urllib.parse.urlsplit(normalized).hostname or ""
        for prefix in self._prefixes.get(host, ()):
            if normalized.startswith(prefix):
                return Rule("prefix", prefix)
        domain = self._matching_domain(host)
        return Rule("domain", domain) if domain else None

    def _matching_domain(self, host: str) -> str | None:
        if host in self._domains:
            return host
        if is_ip_address(host):
            return None  # subdomain matching means nothing for an address
        labels = host.split(".")
        for start in range(1, len(labels)):
            suffix = ".".join(labels[start:])
            if suffix in self._domains:
                return suffix
        return None

    def match_sha256(self, digest: str | None) -> Rule | None:
        if digest and digest.lower() in self._sha256:
            return Rule("sha256", digest.lower())
        return None

    def match_phash(self, phash: int, max_distance: int) -> PhashMatch | None:
        """The closest phash rule within `max_distance` bits, if any."""
        if not self._phash_values:
            return None
        distances = np.bitwise_count(self._phashes ^ np.uint64(phash))
        best = int(np.argmin(distances))
        if int(distances[best]) > max_distance:
            return None
        return PhashMatch(Rule("phash", self._phash_values[best]), int(distances[best]))


def load_optout_list(path: str) -> OptOutList:
    """Read and check the list at `path` (local or any Beam filesystem)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path) as handle:
            data = handle.read()
    except Exception as err:  # Beam wraps every filesystem error differently
        raise OptOutListError(f"{path}: cannot read the opt-out list: {err}") from None
    return parse_optout_list(path, data)


def parse_optout_list(path: str, data: bytes) -> OptOutList:
    """Parse a list's bytes; the format follows the name (`.parquet`, `.csv`, else text)."""
    name = re.sub(r"\.(gz|bz2|zst|deflate)$", "", path.lower())
    if name.endswith(".parquet"):
        entries = _parquet_entries(path, data)
    elif name.endswith(".csv"):
        entries = _csv_entries(path, data)
    else:
        entries = _text_entries(path, data)
    rules, errors = [], []
    for where, kind, value in entries:
        try:
            rules.append(parse_rule(kind, value))
        except ValueError as err:
            errors.append(f"{where}: {err}")
    if errors:
        shown = errors[:_MAX_ERRORS_SHOWN]
        more = f"\n  ... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise OptOutListError(
            f"{path}: {len(errors)} bad opt-out rule(s) (expected kind:value with kind one of "
            f"{', '.join(KINDS)}):\n  " + "\n  ".join(shown) + more
        )
    return OptOutList(rules)


def _decode_text(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise OptOutListError(f"{path}: not UTF-8 text (byte {err.start}); a text list has one kind:value per line") from None


def _text_entries(path: str, data: bytes) -> Iterator[tuple[str, str, str]]:
    for number, line in enumerate(_decode_text(path, data).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, colon, value = line.partition(":")
        yield (f"{path}:{number}", kind, value) if colon else (f"{path}:{number}", "", line)


def _csv_entries(path: str, data: bytes) -> Iterator[tuple[str, str, str]]:
    reader = csv.DictReader(io.StringIO(_decode_text(path, data)))
    _require_columns(path, reader.fieldnames or [])
    for row in reader:
        yield f"{path}:{reader.line_num}", row.get("kind") or "", row.get("value") or ""


def _parquet_entries(path: str, data: bytes) -> Iterator[tuple[str, str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        raise OptOutListError(f"{path}: not a readable Parquet file: {err}") from None
    _require_columns(path, table.column_names)
    kinds, values = table.column("kind").to_pylist(), table.column("value").to_pylist()
    for number, (kind, value) in enumerate(zip(kinds, values), start=1):
        yield f"{path}: row {number}", str(kind or ""), str(value or "")


def _require_columns(path: str, columns: list[str]) -> None:
    missing = [name for name in ("kind", "value") if name not in columns]
    if missing:
        raise OptOutListError(f"{path}: missing column(s) {', '.join(missing)}; a CSV/Parquet list has columns kind,value")

