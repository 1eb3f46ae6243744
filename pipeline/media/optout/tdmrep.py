"""W3C TDM Reservation Protocol (TDMRep): the `tdm-reservation` header and /.well-known/tdmrep.json."""
from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from pipeline.media.optout.urls import normalize_escapes, normalize_url


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
    body = normalize_escapes(location[:-1] if anchored else location)
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
