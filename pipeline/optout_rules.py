"""Creators' opt-out: the user's opt-out list and the machine-readable signals.

Shared by the `optout` stage (filters/optout.py) and `curate takedown`
(pipeline/takedown.py).  Everything here is a pure function of its input (a
URL, headers, bytes, a file); fetching robots.txt and tdmrep.json is the
stage's job.

The opt-out list
----------------
A text file with one `kind:value` rule per line (`#` starts a comment line,
blank lines are skipped), or a CSV or Parquet file with columns `kind,value`:

    domain:example.com                  the host and all its subdomains
    url:https://example.com/a/b.jpg     exactly this URL (after normalisation)
    prefix:https://example.com/gallery/ every URL starting with this (after normalisation)
    sha256:<64 hex digits>              the original downloaded bytes
    phash:<16 hex digits>               str(imagehash.phash(image)); matches within
                                        the stage's Hamming distance

URLs are compared after `normalize_url`: lower-case scheme and host, IDNA host,
no trailing dot, default port dropped, fragment and user info dropped, empty
path made "/", percent-encoding normalised (escaped unreserved characters
decoded, other escapes upper-cased, non-ASCII and spaces escaped as UTF-8).
Dot segments ("/a/../b") are not resolved.  Only http and https URLs match.

pHash and the stored image
--------------------------
`phash_of_image` hashes the image as it is stored in the dataset (after the
recipe's resize), so the run and a later takedown agree.  pHash survives
scaling but not padding or cropping, so white `border` padding is undone
first (the content box follows from the original width and height); content
that `center_crop` cut away cannot be recovered, so a non-square image
cropped that way usually does not match its creator's hash.
"""
from __future__ import annotations

import collections
import csv
import io
import ipaddress
import json
import re
import string
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

KINDS = ("domain", "url", "prefix", "sha256", "phash")
URL_KINDS = ("url", "prefix", "domain")

# Reject reasons, one per kind of signal.
REASON_LIST = "optout_list"
REASON_ROBOTS_TXT = "optout_robots_txt"
REASON_TDMREP = "optout_tdmrep"
REASON_X_ROBOTS_TAG = "optout_x_robots_tag"
REASON_C2PA = "optout_c2pa"
OPTOUT_REASONS = (REASON_LIST, REASON_ROBOTS_TXT, REASON_TDMREP, REASON_X_ROBOTS_TAG, REASON_C2PA)

# Reject field naming what matched ("domain:example.com", "robots.txt", ...).
RULE_FIELD = "optout_rule"

_MAX_ERRORS_SHOWN = 10
_DEFAULT_PORTS = {"http": 80, "https": 443}


class OptOutListError(ValueError):
    """The opt-out list cannot be read; the message names the file and lines."""


# ------------------------------------------------------------ URL normalisation

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_HOST_LABELS = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


def _normalize_escapes(text: str) -> str:
    # Escape what may not appear raw (non-ASCII as UTF-8, spaces, controls),
    # keeping existing escapes and all ASCII punctuation as they are ...
    text = urllib.parse.quote(text, safe=string.punctuation)

    # ... then decode escaped unreserved characters and upper-case the rest.
    def one(match: re.Match) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else f"%{match.group(1).upper()}"

    return _ESCAPE.sub(one, text)


def normalize_host(host: str) -> str:
    """Lower-case, IDNA-encoded, without a trailing dot."""
    host = host.strip().rstrip(".").lower()
    if host and not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # not a valid IDN: compare it as given
    return host


def normalize_url(url: str) -> str | None:
    """The canonical form of an http(s) URL, or None if `url` is not one."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except (ValueError, AttributeError):
        return None
    scheme = parts.scheme.lower()
    host = normalize_host(parts.hostname or "")
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    path = _normalize_escapes(parts.path) or "/"
    return urllib.parse.urlunsplit((scheme, netloc, path, _normalize_escapes(parts.query), ""))


def host_of(url: str) -> str | None:
    normalized = normalize_url(url)
    return urllib.parse.urlsplit(normalized).hostname if normalized else None


def origin_of(url: str) -> str | None:
    """scheme://host[:port] of an http(s) URL: the scope of robots.txt and tdmrep.json."""
    normalized = normalize_url(url)
    if normalized is None:
        return None
    parts = urllib.parse.urlsplit(normalized)
    return f"{parts.scheme}://{parts.netloc}"


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------ the opt-out list


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
    if not (_HOST_LABELS.match(host) or _is_ip_address(host.strip("[]"))):
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
        if _is_ip_address(host):
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


# ------------------------------------------------------------ X-Robots-Tag

# img2dataset's disallowed_header_directives, plus `none` (= noindex, nofollow).
DISALLOWING_ROBOTS_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
# Directives that carry a value after a colon, so "name: value" is not a user-agent scope.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def x_robots_tag_disallows(value: str | None, agent: str) -> str | None:
    """The directive in an X-Robots-Tag value that forbids use by `agent`, if any.

    Handles the scoped form `otherbot: noindex, nofollow`: directives after a
    `name:` prefix apply to that agent only, until the next prefix.  Several
    X-Robots-Tag fields arrive joined by ", ", so an unscoped field after a
    scoped one reads as part of that scope (the field boundary is lost).
    """
    if not value:
        return None
    agent, scope = agent.lower(), None
    for piece in value.split(","):
        name, colon, rest = piece.partition(":")
        if colon and name.strip().lower() not in _VALUED_DIRECTIVES:
            scope, piece = name.strip().lower(), rest
        directive = piece.strip().lower()
        if scope in (None, agent, "*") and directive in DISALLOWING_ROBOTS_DIRECTIVES:
            return directive
    return None


# ------------------------------------------------------------ TDMRep (W3C TDM Reservation Protocol)


def tdm_reservation(value: Any) -> int | None:
    """1 (reserved) or 0 (not reserved); None for anything else, which the spec treats as unset."""
    text = str(value).strip() if value is not None else ""
    return int(text) if text in ("0", "1") else None


@dataclass(frozen=True)
class TdmRepRule:
    location: str
    pattern: re.Pattern
    reservation: int


def _location_pattern(location: str) -> re.Pattern:
    """A robots.txt-style path pattern: prefix match, `*` any run of characters, final `$` end."""
    anchored = location.endswith("$")
    body = _normalize_escapes(location[:-1] if anchored else location)
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(regex + ("$" if anchored else ""))


def parse_tdmrep_json(body: bytes | None) -> list[TdmRepRule]:
    """The rules of a /.well-known/tdmrep.json; [] if it is not a valid rule array.

    Rules whose tdm-reservation is neither 0 nor 1, or without a string
    location, are skipped (a protocol error means "unset").
    """
    try:
        document = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(document, list):
        return []
    rules = []
    for entry in document:
        if not isinstance(entry, dict) or not isinstance(entry.get("location"), str):
            continue
        reservation = tdm_reservation(entry.get("tdm-reservation"))
        if reservation is not None:
            rules.append(TdmRepRule(entry["location"], _location_pattern(entry["location"]), reservation))
    return rules


def tdmrep_rule_for(rules: list[TdmRepRule], url: str) -> TdmRepRule | None:
    """The first rule whose location matches the URL's path ("the most specific
    match is the first in sequence"); matching is case-sensitive."""
    normalized = normalize_url(url)
    if normalized is None:
        return None
    path = urllib.parse.urlsplit(normalized).path
    return next((rule for rule in rules if rule.pattern.match(path)), None)


# ------------------------------------------------------------ C2PA

# Assertion labels (before any ".vN" version or "__N" instance suffix) and the
# entries in them that concern training and mining (not ai_inference).
_TRAINING_MINING_LABELS = ("c2pa.training-mining", "cawg.training-mining")
_TRAINING_MINING_USES = frozenset(
    f"{prefix}.{use}" for prefix in ("c2pa", "cawg") for use in ("ai_generative_training", "ai_training", "data_mining")
)
_LABEL_SUFFIX = re.compile(r"(\.v\d+)?(__\d+)?$")


def c2pa_store_disallows_training(store: dict[str, Any]) -> str | None:
    """The first training/mining entry marked `notAllowed` in any manifest of
    a C2PA manifest store (c2pa-python's Reader.json() layout), if any."""
    for manifest in (store.get("manifests") or {}).values():
        for assertion in manifest.get("assertions") or []:
            label = _LABEL_SUFFIX.sub("", str(assertion.get("label", "")))
            if label not in _TRAINING_MINING_LABELS:
                continue
            entries = (assertion.get("data") or {}).get("entries") or {}
            for use, entry in entries.items():
                allowed = str((entry or {}).get("use", "")).lower()
                if use in _TRAINING_MINING_USES and allowed == "notallowed":
                    return use
    return None


class C2paReader:
    """Reads C2PA manifests from image bytes with c2pa-python, offline.

    What is checked: every manifest in the store embedded in the image (JPEG
    APP11, PNG caBX, WebP, ... as c2pa-rs supports) for a training-mining
    assertion with a training/mining entry `"use": "notAllowed"`.  What is NOT
    checked: the claim signature, the certificate trust chain, timestamps and
    the hash binding to the pixels (verification is switched off: an opt-out is
    a request to honour whoever signed it, and skipping it saves time); remote
    manifests referenced from XMP (never fetched: no network at run time).
    """

    def __init__(self):
        import c2pa

        self._c2pa = c2pa
        settings = c2pa.Settings.from_dict(
            {"verify": {"verify_after_reading": False, "remote_manifest_fetch": False, "ocsp_fetch": False}}
        )
        self._context = c2pa.Context(settings)

    def training_disallowed(self, data: bytes, mime: str | None) -> str | None:
        # Every embedded C2PA store is a JUMBF box tree; skip the native
        # reader for the vast majority of images that have none.
        if not data or b"jumb" not in data:
            return None
        try:
            with self._c2pa.Reader(mime or "", io.BytesIO(data), context=self._context) as reader:
                store = json.loads(reader.json())
        except (self._c2pa.C2paError, ValueError):
            return None  # no manifest, or one too broken to read
        return c2pa_store_disallows_training(store)


def check_c2pa_available() -> None:
    try:
        import c2pa  # noqa: F401
    except ImportError:
        raise ImportError(
            "C2PA checks need the c2pa-python package (pip install c2pa-python); or set c2pa: false"
        ) from None


# ------------------------------------------------------------ pHash


def phash_of_image(data: bytes, original_size: tuple[int | None, int | None] | None = None) -> int:
    """64-bit pHash of a stored image, with white `border` padding removed.

    `original_size` is (original_width, original_height) from the metadata.
    Raises OSError/ValueError if the image does not decode.
    """
    import imagehash
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (128, 128))  # pHash looks at 32x32: a reduced JPEG decode is plenty
        img = img.convert("RGB")
    return int(str(imagehash.phash(unpadded(img, original_size))), 16)


def unpadded(img, original_size: tuple[int | None, int | None] | None):
    """A stored PIL image without the white bars `border` resizing added (unchanged if it has none)."""
    box = _padded_content_box(img, original_size)
    return img if box is None else img.crop(box)


_WHITE_ENOUGH = 245  # mean grey level of a padding bar after JPEG artefacts


def _padded_content_box(img, original_size) -> tuple[int, int, int, int] | None:
    """The centred box holding the picture if `img` looks border-padded, else None."""
    if not original_size or not all(original_size):
        return None
    (width, height), (original_width, original_height) = img.size, original_size
    scale = min(width / original_width, height / original_height)
    content_width, content_height = round(original_width * scale), round(original_height * scale)
    if content_width >= width - 1 and content_height >= height - 1:
        return None  # same aspect ratio: nothing was padded
    left, top = (width - content_width) // 2, (height - content_height) // 2
    box = (left, top, left + content_width, top + content_height)
    bars = [(0, 0, width, top), (0, box[3], width, height), (0, 0, left, height), (box[2], 0, width, height)]
    grey = img.convert("L")
    for bar in bars:
        if bar[2] > bar[0] and bar[3] > bar[1] and _mean(grey.crop(bar)) < _WHITE_ENOUGH:
            return None  # not white bars: cropped (center_crop) rather than padded
    return box


def _mean(img) -> float:
    from PIL import ImageStat

    return ImageStat.Stat(img).mean[0]


# ------------------------------------------------------------ report


def optout_report(rejects_rows: list[dict], top: int = 50) -> dict[str, Any]:
    """Opt-out statistics from rejects rows (the rejects parquet as dicts), for report/optout.json.

    Counts rows whose reason is an opt-out reason (whatever the stage: the
    `optout` stage at run time, `takedown` afterwards): by reason, by list
    rule kind (domain/url/prefix/sha256/phash), and the `top` hosts with the
    most opted-out rows, each with its own reason breakdown.
    """
    by_reason: collections.Counter[str] = collections.Counter()
    by_stage: collections.Counter[str] = collections.Counter()
    by_list_rule_kind: collections.Counter[str] = collections.Counter()
    by_domain: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for row in rejects_rows:
        reason = row.get("reason")
        if reason not in OPTOUT_REASONS:
            continue
        by_reason[reason] += 1
        by_stage[row.get("stage") or ""] += 1
        by_domain[host_of(row.get("url") or "") or "(no host)"][reason] += 1
        if reason == REASON_LIST:
            by_list_rule_kind[_rule_kind(row.get("fields"))] += 1
    ranked = sorted(by_domain.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    return {
        "total": sum(by_reason.values()),
        "by_reason": dict(by_reason.most_common()),
        "by_stage": dict(by_stage.most_common()),
        "by_list_rule_kind": dict(by_list_rule_kind.most_common()),
        "domains": len(by_domain),
        "top_domains": [
            {"domain": domain, "count": sum(reasons.values()), "by_reason": dict(reasons.most_common())}
            for domain, reasons in ranked[:top]
        ],
    }


def _rule_kind(fields: Any) -> str:
    """The kind of the matched list rule, from a rejects row's `fields` (JSON text or dict)."""
    if isinstance(fields, str):
        try:
            fields = json.loads(fields)
        except ValueError:
            fields = {}
    rule = str((fields or {}).get(RULE_FIELD) or "")
    kind = rule.partition(":")[0]
    return kind if kind in KINDS else "unknown"
