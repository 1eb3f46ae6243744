"""URL and host normalisation: the form in which opt-out rules and sample URLs are compared.

URLs are compared after `normalize_url`: lower-case scheme and host, IDNA host,
no trailing dot, default port dropped, fragment and user info dropped, empty
path made "/", percent-encoding normalised (escaped unreserved characters
decoded, other escapes upper-cased, non-ASCII and spaces escaped as UTF-8).
Dot segments ("/a/../b") are not resolved.  Only http and https URLs match.
"""
from __future__ import annotations

import ipaddress
import re
import string
import urllib.parse

_DEFAULT_PORTS = {"http": 80, "https": 443}

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def normalize_escapes(text: str) -> str:
    """Percent-encoding in one form, for URL paths and queries and TDMRep locations."""
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
    path = normalize_escapes(parts.path) or "/"
    return urllib.parse.urlunsplit((scheme, netloc, path, normalize_escapes(parts.query), ""))


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


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

