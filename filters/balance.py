"""MetaCLIP balancing: cap how many pairs each metadata entry brings (Xu et al. 2023).

Each caption is matched against a list of metadata entries (whole-word
substrings, `pipeline.media.metaclip_entries`).  Over the whole pool, an entry
matched by `count` captions gets the probability p = t / max(count, t): tail
entries (count <= t) have p = 1, head entries are sampled down to about t
pairs.  A pair with matched entries e1..ek is kept with probability
1 - (1 - p1)...(1 - pk), as in MetaCLIP's curation code (one independent draw
per entry, kept if any draw succeeds), so a pair with one tail entry is always
kept.  A pair that matches no entry is not in the curated pool: it is
dropped (`no_entry_match`), or kept with `unmatched: keep`.

The draw is a deterministic hash of (seed, key), uniform in [0, 1), not a
random generator: a rerun, any number of workers and any runner keep the same
pairs.  The stage runs before the download, so dropped pairs are never fetched.

Languages (MetaCLIP 2): when samples carry a `lang_field` (the `language`
stage writes `lang`), entries are counted per language and each language has
its own t: `t_per_lang` ("de=5000") where given; else, with `t_from_tail`,
the t whose tail proportion matches `t_reference_lang`'s at `t` (MetaCLIP 2's
p_to_t/t_to_p); else `t`.  Samples without the field form the pool "*".

Fields: `balance_entries` (the matched entries), `balance_keep_prob`; a
rejected pair also gets `balance_entry`, its most over-represented entry.
Report (audit.json, stages.balance): per language, t and the entry-count curve
before and after (counts sorted descending, at log-spaced ranks).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import apache_beam as beam
import numpy as np

from pipeline.core.stage import DatasetStage, Needs
from pipeline.media.metaclip_entries import EntryMatcher, load_entries, shared_matcher
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import REJECTED, Sample

KEPT = "kept"
NO_LANGUAGE = "*"
ENTRIES_FIELD = "balance_entries"
KEEP_PROB_FIELD = "balance_keep_prob"


@register
class Balance(DatasetStage):
    name = "balance"
    NEEDS = Needs(image=False)

    @dataclass(frozen=True)
    class Params:
        t: int = 20000  # OpenAI CLIP's threshold for 400M pairs; MetaCLIP used 170000 for 2.5B
        entries_path: str | None = None  # default: filters/data/balance_entries.txt; or MetaCLIP's metadata.json
        lowercase: bool = False  # MetaCLIP matches case-sensitively
        seed: int = 0  # of the deterministic per-sample draw: another seed keeps another subset
        unmatched: Literal["drop", "keep"] = "drop"  # captions matching no entry: MetaCLIP drops them
        lang_field: str = "lang"  # "" counts every sample in one pool
        t_per_lang: tuple[str, ...] = ()  # "LANG=T" items
        t_from_tail: bool = False  # other languages get the t that keeps the reference language's tail share
        t_reference_lang: str = "en"  # the language whose t sets the tail share for t_from_tail
        curve_points: int = 24  # points of the entry-count curve in the audit

        def __post_init__(self) -> None:
            if self.t < 1:
                raise ParamError(f"balance.t must be at least 1, got {self.t}")
            if not 2 <= self.curve_points <= 1000:
                raise ParamError(f"balance.curve_points must be within [2, 1000], got {self.curve_points}")
            parse_t_per_lang(self.t_per_lang)

    def check(self) -> None:
        load_entries(self.params.entries_path)

    def transform(self) -> beam.PTransform:
        return _Balance(self.name, self.params)


def parse_t_per_lang(items: Iterable[str]) -> dict[str, int]:
    table = {}
    for item in items:
        lang, _, value = item.partition("=")
        try:
            t = int(value)
        except ValueError:
            t = 0
        if not lang.strip() or t < 1:
            raise ParamError(f"balance.t_per_lang: {item!r} is not LANG=T with T a positive integer")
        table[lang.strip()] = t
    return table


# ---------------------------------------------------------------- the algorithm


def tail_proportion(counts: np.ndarray, t: int) -> float:
    """Share of all matches that fall on entries counted fewer than t times (MetaCLIP 2's t_to_p)."""
    return float(counts[counts < t].sum() / counts.sum())


def t_for_tail_proportion(counts: np.ndarray, proportion: float) -> int:
    """The entry count at which the cumulative share of the smallest counts is closest to `proportion` (p_to_t)."""
    ascending = np.sort(counts)
    cumulative = np.cumsum(ascending) / ascending.sum()
    return max(1, int(ascending[int(np.abs(cumulative - proportion).argmin())]))


def thresholds(counts: dict[str, dict[str, int]], params: Balance.Params) -> dict[str, int]:
    """t for each language present in `counts`."""
    explicit = parse_t_per_lang(params.t_per_lang)
    reference = counts.get(params.t_reference_lang)
    proportion = None
    if params.t_from_tail and reference:
        proportion = tail_proportion(np.fromiter(reference.values(), dtype=np.int64), params.t)
    result = {}
    for lang, entry_counts in counts.items():
        if lang in explicit:
            result[lang] = explicit[lang]
        elif proportion is not None and lang != params.t_reference_lang:
            result[lang] = t_for_tail_proportion(np.fromiter(entry_counts.values(), dtype=np.int64), proportion)
        else:
            result[lang] = params.t
    return result


def head_probabilities(entry_counts: dict[str, int], t: int) -> dict[str, float]:
    """p = t / count for the entries counted more than t times; every other entry has p = 1."""
    return {entry: t / count for entry, count in entry_counts.items() if count > t}


def keep_probability(entries: list[str], head: dict[str, float]) -> float:
    """1 - prod(1 - p): the chance that at least one entry's draw succeeds."""
    probabilities = [head.get(entry, 1.0) for entry in entries]
    if len(probabilities) == 1:
        return probabilities[0]  # exact, where 1 - (1 - p) is not
    return 1.0 - float(np.prod([1.0 - p for p in probabilities]))


def uniform_draw(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, key): the same on every run and worker."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def count_curve(counts: Iterable[int], points: int) -> list[list[int]]:
    """[rank, count] with counts sorted descending, at about `points` log-spaced ranks (1-based)."""
    descending = np.sort(np.fromiter(counts, dtype=np.int64))[::-1]
    if len(descending) == 0:
        return []
    ranks = np.unique(np.geomspace(1, len(descending), points).round().astype(np.int64))
    return [[int(rank), int(descending[rank - 1])] for rank in ranks]


def language_of(sample: Sample, lang_field: str) -> str:
    if not lang_field:
        return NO_LANGUAGE
    value = sample.fields.get(lang_field, sample.extra.get(lang_field))
    return value if isinstance(value, str) and value else NO_LANGUAGE


# ---------------------------------------------------------------- Beam


class _MatchEntries(beam.DoFn):
    def __init__(self, entries_path: str | None, lowercase: bool):
        self._entries_path, self._lowercase = entries_path, lowercase
        self._matcher: EntryMatcher | None = None

    def setup(self):
        self._matcher = shared_matcher(self._entries_path, self._lowercase)

    def process(self, sample: Sample):
        sample.fields[ENTRIES_FIELD] = self._matcher.match(sample.caption)
        yield sample


class _CountsByLanguage(beam.CombineFn):
    """((lang, entry), count) pairs -> {lang: {entry: count}}."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, table: dict, element) -> dict:
        (lang, entry), count = element
        per_lang = table.setdefault(lang, {})
        per_lang[entry] = per_lang.get(entry, 0) + count
        return table

    def merge_accumulators(self, tables: Iterable[dict]) -> dict:
        merged: dict = {}
        for table in tables:
            for lang, per_lang in table.items():
                for entry, count in per_lang.items():
                    self.add_input(merged, ((lang, entry), count))
        return merged

    def extract_output(self, table: dict) -> dict:
        return table


class _CountEntries(beam.PTransform):
    """Samples -> one {lang: {entry: count}} over their matched entries."""

    def __init__(self, lang_field: str):
        super().__init__()
        self._lang_field = lang_field

    def expand(self, samples):
        lang_field = self._lang_field
        return (
            samples
            | "LangEntryPairs" >> beam.FlatMap(
                lambda s: [(language_of(s, lang_field), e) for e in s.fields[ENTRIES_FIELD]]
            )
            | "CountPerEntry" >> beam.combiners.Count.PerElement()
            | "CountsByLanguage" >> beam.CombineGlobally(_CountsByLanguage())
        )


def probability_table(counts: dict, params: Balance.Params) -> dict[str, Any]:
    """The side input of the split: t per language and p of each head entry."""
    t_by_lang = thresholds(counts, params)
    head = {lang: head_probabilities(counts[lang], t) for lang, t in t_by_lang.items()}
    return {"t": t_by_lang, "head": head}


class _Split(beam.DoFn):
    def __init__(self, stage: str, params: Balance.Params):
        self._stage, self._params = stage, params

    def process(self, sample: Sample, table: dict):
        entries = sample.fields[ENTRIES_FIELD]
        if not entries:
            sample.fields[KEEP_PROB_FIELD] = 1.0
            if self._params.unmatched == "keep":
                yield sample
            else:
                yield beam.pvalue.TaggedOutput(REJECTED, sample.reject(self._stage, "no_entry_match"))
            return
        head = table["head"].get(language_of(sample, self._params.lang_field), {})
        probability = keep_probability(entries, head)
        sample.fields[KEEP_PROB_FIELD] = probability
        if uniform_draw(sample.key, self._params.seed) < probability:
            yield sample
            return
        sample.fields["balance_entry"] = min(entries, key=lambda entry: (head.get(entry, 1.0), entry))
        yield beam.pvalue.TaggedOutput(REJECTED, sample.reject(self._stage, "over_represented"))


def balance_report(before: dict, after: dict, table: dict, points: int) -> dict[str, Any]:
    languages = {}
    for lang, entry_counts in sorted(before.items()):
        t = table["t"][lang]
        kept_counts = after.get(lang, {})
        languages[lang] = {
            "t": t,
            "entries_matched": len(entry_counts),
            "head_entries": len(table["head"][lang]),
            "entries_over_t_after": sum(1 for count in kept_counts.values() if count > t),
            "matches_before": int(sum(entry_counts.values())),
            "matches_after": int(sum(kept_counts.values())),
            "curve_before": count_curve(entry_counts.values(), points),
            "curve_after": count_curve(kept_counts.values(), points),
        }
    return {"languages": languages}


class _Balance(beam.PTransform):
    def __init__(self, stage: str, params: Balance.Params):
        super().__init__()
        self._stage, self._params = stage, params

    def expand(self, samples):
        p = self._params
        matched = samples | "MatchEntries" >> beam.ParDo(_MatchEntries(p.entries_path, p.lowercase))
        before = matched | "CountBefore" >> _CountEntries(p.lang_field)
        table = before | "Probabilities" >> beam.Map(probability_table, p)
        split = matched | "Split" >> beam.ParDo(_Split(self._stage, p), beam.pvalue.AsSingleton(table)).with_outputs(
            REJECTED, main=KEPT
        )
        after = split[KEPT] | "CountAfter" >> _CountEntries(p.lang_field)
        report = before | "Report" >> beam.Map(
            balance_report, beam.pvalue.AsSingleton(after), beam.pvalue.AsSingleton(table), p.curve_points
        )
        return {KEPT: split[KEPT], REJECTED: split[REJECTED], "report": report}
