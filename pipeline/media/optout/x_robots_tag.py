"""The X-Robots-Tag response header: does it forbid use by our user agent?"""
from __future__ import annotations

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
