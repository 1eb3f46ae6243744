"""Honour creators' opt-outs: the user's opt-out list and the web's machine-readable signals.

Each signal drops the sample with its own reason:

  optout_list          the user's list (pipeline/media/optout/rule_list.py): url, prefix and
                       domain rules before the download (and again on the final
                       URL after redirects), sha256 on the original bytes, phash
                       on the stored image in keep()
  optout_robots_txt    robots.txt of the image's origin disallows the URL for
                       `user_agent_token` (or, if no group names it, for `*`)
  optout_x_robots_tag  the image response's X-Robots-Tag has noai, noimageai,
                       noindex, noimageindex or none, unscoped or scoped to
                       `user_agent_token` ("curate: noai")
  optout_tdmrep        W3C TDMRep: `tdm-reservation: 1` on the image response, or
                       /.well-known/tdmrep.json reserves the URL's path
  optout_c2pa          a C2PA manifest in the image says training/mining `notAllowed`

Decisions worth knowing:

* robots.txt (RFC 9309), fetched once per origin (scheme, host, port) and
  cached: 2xx is parsed with protego; 4xx means no rules (allowed); 5xx (after
  the download retries) and 429 mean disallow-all, as RFC 9309 2.3.1.4 asks.
  Network failures (DNS, refused, timeout, TLS, SSRF-blocked) are treated as
  allowed, unlike the RFC: the image fetch then fails on its own with the real
  reason, so an unreachable host is not reported as an opt-out.  A robots.txt
  larger than `download.max_bytes` is treated as allowed.  Only the origin of
  the listed URL is checked, not the hosts a redirect leads to.
* TDMRep priority: the spec has the HTTP header override the tdmrep.json file
  (header 0 re-allows what the file reserved).  The header is only known once
  the image response arrives, so the whole TDMRep decision is made in
  check_response: a `tdm-reservation` header of 0 or 1 decides; without one
  (or with another value, which the spec calls unset), the file decides: its
  first rule whose `location` matches the path (robots-style `*` and `$`).
  The cost: a reserved image is fetched once, then dropped before decoding.
  The file is fetched once per origin and cached, for the listed URL's origin
  and, after a redirect, the final URL's origin too.  A missing, unreachable or
  invalid file means no reservation.
* The HTML `<meta name="tdm-reservation">` (and robots meta) technique applies
  to the page that embeds an image.  Ingesting URL lists, we never fetch that
  page, so it is not applicable here; a crawl-based front end would check it.
* C2PA (see pipeline.media.optout.c2pa_manifests.C2paReader): manifests are
  read with c2pa-python, offline, without signature or trust validation.
* Per-origin caches are LRU-bounded (`_MAX_ORIGINS_CACHED`) and thread-safe:
  concurrent lookups of one origin wait for a single fetch.  before_download
  and check_response run in the download step's copy of the stage, so each
  file is fetched once per worker process (keep() runs in another copy that
  needs no per-origin files).
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from protego import Protego

from pipeline.core.stage import DownloadHook, Filter, StageContext
from pipeline.media.optout.c2pa_manifests import C2paReader, check_c2pa_available
from pipeline.media.optout.phash import phash_of_image
from pipeline.media.optout.reasons import (
    REASON_C2PA,
    REASON_LIST,
    REASON_ROBOTS_TXT,
    REASON_TDMREP,
    REASON_X_ROBOTS_TAG,
    RULE_FIELD,
)
from pipeline.media.optout.rule_list import OptOutList, load_optout_list
from pipeline.media.optout.tdmrep import TdmRepRule, parse_tdmrep_json, tdm_reservation, tdmrep_rule_for
from pipeline.media.optout.urls import origin_of
from pipeline.media.optout.x_robots_tag import x_robots_tag_disallows
from pipeline.media.download import Downloader, DownloadParams
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import KEEP, Sample, Verdict, drop

log = logging.getLogger(__name__)

_MAX_ORIGINS_CACHED = 10_000
# RFC 9309 2.5: crawlers must parse at least 500 KiB; more is not needed.
_ROBOTS_TXT_PARSE_BYTES = 500 * 1024

V = TypeVar("V")


class OncePerKey(Generic[V]):
    """A bounded LRU of values computed at most once per key, safe under threads.

    The first caller for a key computes; concurrent callers for the same key
    wait for that result instead of computing again.  If the computation
    raises, `fallback` is stored (and logged).
    """

    def __init__(self, compute: Callable[[str], V], fallback: V, max_entries: int = _MAX_ORIGINS_CACHED):
        self._compute, self._fallback, self._max = compute, fallback, max_entries
        self._entries: collections.OrderedDict[str, _Pending] = collections.OrderedDict()
        self._lock = threading.Lock()

    def known(self, key: str) -> bool:
        """True if `get(key)` would return at once: its value is computed and still cached."""
        with self._lock:
            entry = self._entries.get(key)
        return entry is not None and entry.ready.is_set()

    def get(self, key: str) -> V:
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if owner:
                entry = self._entries[key] = _Pending(self._fallback)
                if len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
        if owner:
            try:
                entry.value = self._compute(key)
            except Exception:  # a policy fetch must never take down a worker
                log.exception("optout: computing the policy for %s failed", key)
            finally:
                entry.ready.set()
        else:
            entry.ready.wait()
        return entry.value


class _Pending:
    def __init__(self, value):
        self.value = value
        self.ready = threading.Event()


# ------------------------------------------------------------ policy files


@dataclass(frozen=True)
class RobotsPolicy:
    """A parsed robots.txt, or a blanket answer when there is none to parse."""

    parser: Any = None  # protego.Protego
    allow_all: bool = True

    def allows(self, url: str, agent: str) -> bool:
        if self.parser is None:
            return self.allow_all
        return self.parser.can_fetch(url, agent)


ALLOW_ALL = RobotsPolicy(None, True)
DISALLOW_ALL = RobotsPolicy(None, False)


def robots_policy_from_fetch(status_reason: str | None, body: bytes | None) -> RobotsPolicy:
    """RFC 9309 reading of a robots.txt fetch (see the module docstring)."""
    if status_reason is None:
        text = (body or b"")[:_ROBOTS_TXT_PARSE_BYTES].decode("utf-8", errors="replace")
        return RobotsPolicy(Protego.parse(text), True)
    if status_reason == "http_429" or status_reason.startswith("http_5"):
        return DISALLOW_ALL
    return ALLOW_ALL


# ------------------------------------------------------------ the stage


@register
class OptOut(Filter, DownloadHook):
    """Drop samples whose creators opted out: the user's list, robots.txt, X-Robots-Tag, TDMRep, C2PA."""

    name = "optout"

    @dataclass(frozen=True)
    class Params:
        list: str | None = None  # the user's opt-out list: text (kind:value lines), CSV or Parquet
        x_robots_tag: bool = True  # honour X-Robots-Tag: noai / noimageai headers
        tdmrep: bool = True  # honour TDMRep (tdm-reservation) headers
        robots_txt: bool = True  # honour the image host's robots.txt for user_agent_token
        c2pa: bool = True  # honour C2PA training-and-mining assertions in the image
        phash_distance: int = 4  # max Hamming distance (of 64 bits) for phash rules
        user_agent_token: str = "curate"  # our name in robots.txt and scoped X-Robots-Tag

        def __post_init__(self):
            if not 0 <= self.phash_distance <= 64:
                raise ParamError(f"optout.phash_distance must be within 0-64, got {self.phash_distance}")
            if not self.user_agent_token.strip() or any(c.isspace() for c in self.user_agent_token):
                raise ParamError(f"optout.user_agent_token must be one word, got {self.user_agent_token!r}")

    def __init__(self, params: Any = None):
        super().__init__(params)
        self._state: _State | None = None
        self._state_lock = threading.Lock()

    def __getstate__(self):
        # The list and caches are per worker: never pickled into the pipeline graph.
        state = dict(self.__dict__)
        state["_state"], state["_state_lock"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._state_lock = threading.Lock()

    def check(self) -> None:
        if self.params.list is not None:
            load_optout_list(self.params.list)
        if self.params.c2pa:
            check_c2pa_available()

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        self._ready()

    def _ready(self) -> "_State":
        # before_download may run without setup() having been called, and
        # check_response runs in many threads: initialise once, under a lock.
        if self._state is None:
            with self._state_lock:
                if self._state is None:
                    self._state = _State(self.params, self.context.download)
        return self._state

    # --- before the download --------------------------------------------------

    def before_download(self, sample: Sample) -> Verdict:
        state = self._ready()
        rule = state.optout_list.match_url(sample.url)
        if rule is not None:
            return _drop(sample, REASON_LIST, str(rule))
        if self.params.robots_txt and not state.robots_allows(sample.url):
            return _drop(sample, REASON_ROBOTS_TXT, "robots.txt")
        return KEEP

    def answers_at_once(self, sample: Sample) -> bool:
        """The list is in memory; only a robots.txt not yet fetched for the row's origin makes it wait."""
        return not self.params.robots_txt or self._ready().robots_known(sample.url)

    # --- on the raw response (download thread) --------------------------------

    def check_response(self, sample: Sample, response: Any) -> Verdict:
        state = self._ready()
        for check in (self._list_on_response, self._x_robots_tag, self._tdmrep, self._c2pa):
            verdict = check(state, sample, response)
            if not verdict.keep:
                return verdict
        return KEEP

    def _list_on_response(self, state: "_State", sample: Sample, response: Any) -> Verdict:
        if response.final_url and response.final_url != sample.url:
            rule = state.optout_list.match_url(response.final_url)
            if rule is not None:
                return _drop(sample, REASON_LIST, str(rule))
        if state.optout_list.has_sha256:
            rule = state.optout_list.match_sha256(response.sha256)
            if rule is not None:
                return _drop(sample, REASON_LIST, str(rule))
        return KEEP

    def _x_robots_tag(self, state: "_State", sample: Sample, response: Any) -> Verdict:
        if not self.params.x_robots_tag:
            return KEEP
        directive = x_robots_tag_disallows(response.headers.get("x-robots-tag"), self.params.user_agent_token)
        return _drop(sample, REASON_X_ROBOTS_TAG, f"x-robots-tag: {directive}") if directive else KEEP

    def _tdmrep(self, state: "_State", sample: Sample, response: Any) -> Verdict:
        if not self.params.tdmrep:
            return KEEP
        header = tdm_reservation(response.headers.get("tdm-reservation"))
        if header is not None:  # the header overrides the file, both ways
            return _drop(sample, REASON_TDMREP, "tdm-reservation header") if header == 1 else KEEP
        for url in dict.fromkeys(u for u in (sample.url, response.final_url) if u):
            rule = state.tdmrep_rule_for(url)
            if rule is not None and rule.reservation == 1:
                return _drop(sample, REASON_TDMREP, f"tdmrep.json location {rule.location}")
        return KEEP

    def _c2pa(self, state: "_State", sample: Sample, response: Any) -> Verdict:
        if not self.params.c2pa:
            return KEEP
        use = state.c2pa_reader().training_disallowed(response.data, response.mime)
        return _drop(sample, REASON_C2PA, f"c2pa {use} notAllowed") if use else KEEP

    # --- after the download, at the stage's place in the recipe ---------------

    def keep(self, sample: Sample) -> Verdict:
        state = self._ready()
        if not state.optout_list.has_phash or not sample.image:
            return KEEP
        try:
            phash = phash_of_image(sample.image, (sample.original_width, sample.original_height))
        except (OSError, ValueError):
            return KEEP  # the download step decoded it already; nothing more to learn here
        match = state.optout_list.match_phash(phash, self.params.phash_distance)
        if match is None:
            return KEEP
        return _drop(sample, REASON_LIST, f"{match.rule} (distance {match.distance})")


def _drop(sample: Sample, reason: str, rule: str) -> Verdict:
    # Only dropped samples get the field, so it lands in the rejects, not the shards.
    sample.fields[RULE_FIELD] = rule
    return drop(reason)


class _State:
    """What one worker's copy of the stage loads and caches."""

    def __init__(self, params, download_params):
        self._params = params
        self.optout_list = load_optout_list(params.list) if params.list else OptOutList()
        # Policy files are fetched like images (same user agent, SSRF guard,
        # timeouts, retries, redirect limit and byte cap), just not sniffed.
        self._downloader = Downloader(download_params or DownloadParams())
        self._robots = OncePerKey(self._fetch_robots, ALLOW_ALL)
        self._tdmrep = OncePerKey(self._fetch_tdmrep, [])
        self._c2pa_reader = None
        self._c2pa_lock = threading.Lock()

    def robots_allows(self, url: str) -> bool:
        origin = origin_of(url)
        if origin is None:
            return True  # not an http(s) URL: the download rejects it with invalid_url
        return self._robots.get(origin).allows(url, self._params.user_agent_token)

    def robots_known(self, url: str) -> bool:
        """True if `robots_allows(url)` needs no fetch or wait."""
        origin = origin_of(url)
        return origin is None or self._robots.known(origin)

    def tdmrep_rule_for(self, url: str) -> TdmRepRule | None:
        origin = origin_of(url)
        return tdmrep_rule_for(self._tdmrep.get(origin), url) if origin else None

    def c2pa_reader(self) -> C2paReader:
        with self._c2pa_lock:
            if self._c2pa_reader is None:
                self._c2pa_reader = C2paReader()
            return self._c2pa_reader

    def _fetch_robots(self, origin: str) -> RobotsPolicy:
        result = self._downloader.fetch(f"{origin}/robots.txt", expect_image=False)
        return robots_policy_from_fetch(result.reason, result.data)

    def _fetch_tdmrep(self, origin: str) -> list[TdmRepRule]:
        result = self._downloader.fetch(f"{origin}/.well-known/tdmrep.json", expect_image=False)
        return parse_tdmrep_json(result.data) if result.ok else []
