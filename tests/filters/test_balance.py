"""balance: MetaCLIP's entry matching and balancing, checked against the algorithm's expectation."""
from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from benchmarks.metaclip_balance import (
    PoolSpec,
    check,
    expected_keep_probability,
    head_upper_bounds,
    kept_counts,
    run_balance,
    true_counts,
    true_entries,
    write_entries,
)
from filters.balance import Balance, count_curve, t_for_tail_proportion, tail_proportion, uniform_draw
from pipeline.media.metaclip_entries import EntriesError, EntryMatcher, load_entries
from pipeline.core.params import ParamError, build
from pipeline.core.registry import get_stage
from pipeline.core.records import Sample

# ---------------------------------------------------------------- matching


def test_registered_and_runs_before_the_download():
    assert get_stage("balance") is Balance
    assert Balance().needs().image is False


def test_whole_word_matching_as_metaclip_spaces_text():
    matcher = EntryMatcher(["dog", "new york", "C++", "猫", "the"])
    assert matcher.match("The dog, in new york.") == ["dog", "new york"]  # case-sensitive: "The" is not "the"
    assert matcher.match("dogs in newyork") == []  # whole words only
    assert matcher.match("dog\tthe\ncat") == ["dog", "the"]
    assert matcher.match("I like C++ a lot") == ["C++"]
    assert matcher.match("我的猫很可爱") == ["猫"]  # CJK entries are not space-padded
    assert matcher.match(None) == [] and matcher.match("") == []
    assert EntryMatcher(["the"], lowercase=True).match("The end") == ["the"]


def test_entry_files(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(["dog", " cat ", "dog", ""]))
    assert load_entries(str(tmp_path / "m.json")) == ["dog", "cat"]
    (tmp_path / "m.txt").write_text("# header\ndog\n\ncat\n")
    assert load_entries(str(tmp_path / "m.txt")) == ["dog", "cat"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(EntriesError, match="no entries"):
        load_entries(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.json").write_text('["dog", 3]')
    with pytest.raises(EntriesError, match="list of strings"):
        load_entries(str(tmp_path / "bad.json"))
    with pytest.raises(EntriesError, match="cannot read"):
        Balance(Balance.Params(entries_path=str(tmp_path / "missing.txt"))).check()


def test_default_entries_are_the_shipped_word_list():
    entries = load_entries()
    assert len(entries) == 20000 and entries[:3] == ["the", "to", "and"]
    assert all(entry.isalpha() for entry in entries)


def test_params_are_checked():
    with pytest.raises(ParamError, match="t must be"):
        Balance.Params(t=0)
    with pytest.raises(ParamError, match="LANG=T"):
        build(Balance.Params, {"t_per_lang": ["de:5"]}, "balance")
    assert build(Balance.Params, {"t_per_lang": "de=5,fr=7"}, "balance").t_per_lang == ("de=5", "fr=7")


# ---------------------------------------------------------------- helpers of the algorithm


def test_draw_is_uniform_and_fixed_by_key_and_seed():
    draws = np.array([uniform_draw(f"{i:09d}", 0) for i in range(20000)])
    assert uniform_draw("000000001", 0) == uniform_draw("000000001", 0) != uniform_draw("000000001", 1)
    assert 0.0 <= draws.min() and draws.max() < 1.0
    # Kolmogorov-Smirnov distance to U(0, 1): 1.95 / sqrt(n) is the 0.1% critical value.
    ks = np.max(np.abs(np.sort(draws) - (np.arange(1, 20001) / 20000)))
    assert ks < 1.95 / np.sqrt(20000)


def test_tail_proportion_and_its_inverse_as_metaclip2_defines_them():
    counts = np.array([1, 2, 3, 4, 10])  # total 20
    assert tail_proportion(counts, 4) == pytest.approx(6 / 20)  # 1 + 2 + 3 fall below t = 4
    # Cumulative shares of the sorted counts: .05 .15 .30 .50 1.0; closest to .3 is the third.
    assert t_for_tail_proportion(counts, 0.3) == 3


def test_count_curve_samples_log_spaced_ranks():
    curve = count_curve(range(1, 1001), 4)
    assert curve == [[1, 1000], [10, 991], [100, 901], [1000, 1]]
    assert count_curve([], 5) == []


# ---------------------------------------------------------------- the stage in Beam


def run_samples(stage: Balance, samples: list[Sample], folder: Path) -> dict:
    """Kept and rejected rows (as metadata dicts) and the report, through a JSON file."""
    path = folder / "out.json"

    def write(_, kept, rejected, report):
        path.write_text(json.dumps({"kept": kept, "rejected": rejected, "report": report}, default=str))

    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        outputs = pipeline | beam.Create(samples, reshuffle=False) | stage.transform()
        kept = outputs["kept"] | beam.Map(lambda s: s.metadata()) | "K" >> beam.combiners.ToList()
        rejected = outputs["rejected"] | beam.Map(lambda r: r.row()) | "R" >> beam.combiners.ToList()
        _ = pipeline | "One" >> beam.Create([None]) | beam.Map(
            write, *(beam.pvalue.AsSingleton(p) for p in (kept, rejected, outputs["report"]))
        )
    return json.loads(path.read_text())


def entries_file(folder: Path, entries: list[str]) -> str:
    path = folder / "entries.txt"
    path.write_text("\n".join(entries))
    return str(path)


def captioned(index: int, caption: str | None, lang: str | None = None) -> Sample:
    fields = {"lang": lang} if lang else {}
    return Sample(key=f"{index:06d}", shard_id=0, url=f"http://h/{index}", caption=caption, fields=fields)


def test_rejects_name_the_stage_reason_and_entry(tmp_path):
    samples = [captioned(i, "a dog") for i in range(100)] + [captioned(100, "a cat"), captioned(101, "nothing")]
    samples.append(captioned(102, None))
    stage = Balance(Balance.Params(t=10, entries_path=entries_file(tmp_path, ["dog", "cat"])))
    out = run_samples(stage, samples, tmp_path)
    reasons = {r["key"]: r["reason"] for r in out["rejected"]}
    assert {r["stage"] for r in out["rejected"]} == {"balance"}
    assert reasons["000101"] == reasons["000102"] == "no_entry_match"
    over = [r for r in out["rejected"] if r["reason"] == "over_represented"]
    assert over and all(json.loads(r["fields"])["balance_entry"] == "dog" for r in over)
    cat = next(row for row in out["kept"] if row["key"] == "000100")
    assert cat["balance_entries"] == ["cat"] and cat["balance_keep_prob"] == 1.0
    assert {row["balance_keep_prob"] for row in out["kept"] if row["caption"] == "a dog"} == {10 / 100}
    assert len(out["kept"]) + len(out["rejected"]) == len(samples)
    dog_only = out["report"]["languages"]["*"]
    assert dog_only["t"] == 10 and dog_only["curve_before"][0] == [1, 100] and dog_only["head_entries"] == 1


def test_unmatched_can_be_kept(tmp_path):
    stage = Balance(Balance.Params(t=4, unmatched="keep", entries_path=entries_file(tmp_path, ["dog"])))
    out = run_samples(stage, [captioned(0, "nothing"), captioned(1, "a dog")], tmp_path)
    assert sorted(row["key"] for row in out["kept"]) == ["000000", "000001"] and not out["rejected"]


def test_pairs_with_several_entries_follow_the_any_entry_rule(tmp_path):
    # dog: 20 matches, cat: 10, bird: 2; with t = 5: p = 1/4, 1/2, 1.
    samples = [captioned(i, "dog") for i in range(10)] + [captioned(10 + i, "dog cat") for i in range(8)]
    samples += [captioned(20, "dog cat bird"), captioned(21, "dog bird"), captioned(22, "cat")]
    stage = Balance(Balance.Params(t=5, entries_path=entries_file(tmp_path, ["dog", "cat", "bird"])))
    out = run_samples(stage, samples, tmp_path)
    rows = {row["key"]: row for row in out["kept"]} | {
        r["key"]: {**json.loads(r["fields"]), "caption": r["caption"]} for r in out["rejected"]
    }
    expected = {"dog": 0.25, "dog cat": 1 - 0.75 * 0.5, "dog cat bird": 1.0, "dog bird": 1.0, "cat": 0.5}
    assert {row["caption"]: row["balance_keep_prob"] for row in rows.values()} == pytest.approx(expected)


def test_per_language_counts_and_thresholds(tmp_path):
    # "dog" 10 times in English and 10 times in German, counted apart: en uses t = 5, de its own t = 2.
    samples = [captioned(i, "a dog", "en") for i in range(10)] + [captioned(10 + i, "ein dog", "de") for i in range(10)]
    stage = Balance(Balance.Params(t=5, t_per_lang=("de=2",), entries_path=entries_file(tmp_path, ["dog"])))
    out = run_samples(stage, samples, tmp_path)
    probs = {row["key"]: json.loads(row["fields"])["balance_keep_prob"] for row in out["rejected"]}
    probs |= {row["key"]: row["balance_keep_prob"] for row in out["kept"]}
    assert {probs[f"{i:06d}"] for i in range(10)} == {0.5} and {probs[f"{i:06d}"] for i in range(10, 20)} == {0.2}
    assert {lang: r["t"] for lang, r in out["report"]["languages"].items()} == {"en": 5, "de": 2}


def test_t_from_tail_matches_the_reference_languages_tail_share(tmp_path):
    # en counts a:6 b:2 c:1 -> at t = 3 the tail (b, c) holds 3/9 of the matches.
    # de counts a:8 b:3 c:1 -> cumulative shares 1/12, 4/12, 1; closest to 1/3 is b's count, 3.
    en = ["a"] * 6 + ["b"] * 2 + ["c"]
    de = ["a"] * 8 + ["b"] * 3 + ["c"]
    samples = [captioned(i, word, "en") for i, word in enumerate(en)]
    samples += [captioned(100 + i, word, "de") for i, word in enumerate(de)]
    stage = Balance(Balance.Params(t=3, t_from_tail=True, entries_path=entries_file(tmp_path, ["a", "b", "c"])))
    out = run_samples(stage, samples, tmp_path)
    assert {lang: r["t"] for lang, r in out["report"]["languages"].items()} == {"en": 3, "de": 3}


# ---------------------------------------------------------------- a Zipf pool against the expectation

POOL = PoolSpec(captions=30000, entries=1000, zipf_s=1.0, seed=7)
T = 200


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    params = Balance.Params(t=T, entries_path=str(write_entries(POOL, folder / "entries.txt")))
    return params, run_balance(POOL, params, 0, folder / "result.json")


def test_zipf_pool_is_capped_near_t_and_keeps_the_tail(pool_run):
    _params, result = pool_run
    rows = true_entries(POOL)
    counts = true_counts(rows, POOL.entries)
    kept = kept_counts(result["kept"], rows, POOL.entries)
    bounds = head_upper_bounds(counts, T, delta=1e-6)
    assert len(bounds) >= 10 and counts.max() > 10 * T  # the pool really has a head
    assert check(POOL, T, result) == []
    tail = (counts > 0) & (counts <= T)
    assert np.array_equal(kept[tail], counts[tail])
    # Kept total: tail whole, head about t each (the sum of Binomial(n, t/n) has mean t per entry).
    expected_total = counts[tail].sum() + T * len(bounds)
    assert abs(len(result["kept"]) - expected_total) < 6 * np.sqrt(T * len(bounds))
    assert result["reasons"] == {"balance/over_represented": POOL.captions - len(result["kept"])}
    curve = result["report"]["languages"]["*"]
    assert curve["curve_before"][0] == [1, int(counts.max())]
    assert curve["curve_after"][0] == [1, int(kept.max())]
    assert curve["entries_over_t_after"] == int((kept > T).sum())


@pytest.mark.slow
def test_zipf_pool_is_identical_on_a_rerun(pool_run, tmp_path):
    params, result = pool_run
    assert run_balance(POOL, params, 0, tmp_path / "again.json")["kept"] == result["kept"]


@pytest.mark.slow
def test_zipf_pool_is_identical_with_two_workers(pool_run, tmp_path):
    params, result = pool_run
    assert run_balance(POOL, params, 2, tmp_path / "two.json")["kept"] == result["kept"]


def test_mixed_pool_keeps_what_the_rule_expects(tmp_path):
    spec = PoolSpec(captions=20000, entries=500, two_entry_fraction=0.3, unmatched_fraction=0.05, seed=3)
    params = Balance.Params(t=T, entries_path=str(write_entries(spec, tmp_path / "entries.txt")))
    result = run_balance(spec, params, 0, tmp_path / "result.json")
    rows = true_entries(spec)
    counts = true_counts(rows, spec.entries)
    probabilities = np.array([expected_keep_probability(row, counts, T) for row in rows])
    # The kept total is a sum of independent Bernoulli draws: within 6 standard deviations of its mean.
    sd = np.sqrt((probabilities * (1 - probabilities)).sum())
    assert abs(len(result["kept"]) - probabilities.sum()) < 6 * sd
    assert result["reasons"]["balance/no_entry_match"] == sum(1 for row in rows if not row)
    kept = set(result["kept"])
    assert all(f"{i:09d}" in kept for i, p in enumerate(probabilities) if p == 1.0)


def test_shipped_entries_are_what_the_build_script_makes():
    pytest.importorskip("wordfreq")
    from benchmarks.build_balance_entries import main

    assert main(["--check"]) == 0
