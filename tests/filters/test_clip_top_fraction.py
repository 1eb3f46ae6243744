"""top_fraction: a global cut-off over a score field, run on Beam's local runner."""
from __future__ import annotations

import random
from typing import Callable

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected as a test class
from apache_beam.testing.util import assert_that

from filters.top_fraction import TopFraction, cutoff_from_quantiles, rank_to_keep
from pipeline.core.params import ParamError
from pipeline.core.registry import get_stage
from pipeline.core.records import Sample


def sample(index: int, score) -> Sample:
    fields = {} if score is ... else {"clip_score": score}
    return Sample(key=f"{index:06d}", shard_id=0, url=f"http://h/{index}", caption="c", fields=fields)


def run(stage: TopFraction, samples: list[Sample], check: Callable[[list, list], None]) -> None:
    """Run the stage's transform on `samples`, then call check(kept, rejected) on its outputs.

    The check runs inside the pipeline (Beam's assert_that), as outputs cannot
    be carried out of a runner; its AssertionError fails the pipeline and the test.
    """

    def split(tagged):
        kept = [element for tag, element in tagged if tag == "kept"]
        check(kept, [element for tag, element in tagged if tag == "rejected"])

    with BeamTestPipeline(runner=FnApiRunner()) as pipeline:
        outputs = pipeline | beam.Create(samples, reshuffle=False) | stage.transform()
        tagged = (
            outputs["kept"] | "TagKept" >> beam.Map(lambda s: ("kept", s)),
            outputs["rejected"] | "TagRejected" >> beam.Map(lambda r: ("rejected", r)),
        ) | beam.Flatten()
        assert_that(tagged, split)


def test_registered():
    assert get_stage("top_fraction") is TopFraction


def test_exact_keeps_the_top_fraction():
    scores = list(range(100))
    random.Random(0).shuffle(scores)

    def check(kept, rejected):
        assert sorted(s.fields["clip_score"] for s in kept) == [v / 100 for v in range(70, 100)]
        assert len(rejected) == 70
        assert {(r.stage, r.reason) for r in rejected} == {("top_fraction", "below_top_fraction")}
        assert all(r.fields["clip_score"] < 0.7 for r in rejected)

    run(TopFraction(), [sample(i, s / 100) for i, s in enumerate(scores)], check)


@pytest.mark.parametrize("seed", [0, 1])
def test_ties_at_the_cutoff_are_all_kept(seed):
    # The top half of ten scores is five, but the fifth and sixth tie: both stay, whatever the order.
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.7, 0.8, 0.9, 1.0]
    random.Random(seed).shuffle(scores)

    def check(kept, rejected):
        assert sorted(s.fields["clip_score"] for s in kept) == [0.5, 0.5, 0.7, 0.8, 0.9, 1.0]
        assert len(rejected) == 4

    run(TopFraction(TopFraction.Params(fraction=0.5)), [sample(i, s) for i, s in enumerate(scores)], check)


def test_unscored_samples_are_rejected_and_not_counted():
    samples = [sample(0, ...), sample(1, None), sample(2, float("nan")), sample(3, "high"), sample(4, True)]
    samples += [sample(10 + i, float(i)) for i in range(10)]

    def check(kept, rejected):
        assert sorted(s.fields["clip_score"] for s in kept) == [8.0, 9.0]
        reasons = {r.key: r.reason for r in rejected}
        assert [reasons[f"{i:06d}"] for i in range(5)] == ["missing_score"] * 5
        assert len(rejected) == 13

    run(TopFraction(TopFraction.Params(fraction=0.2)), samples, check)


def test_other_field_and_fraction_one():
    samples = [Sample(key=str(i), shard_id=0, url="u", fields={"aesthetic_score": i}) for i in range(5)]

    def check(kept, rejected):
        assert len(kept) == 5 and not rejected

    run(TopFraction(TopFraction.Params(field="aesthetic_score", fraction=1.0)), samples, check)


def test_empty_input():
    def check(kept, rejected):
        assert kept == [] and rejected == []

    run(TopFraction(), [], check)


def test_approximate_is_close():
    values = list(range(2000))
    random.Random(1).shuffle(values)

    def check(kept, rejected):
        assert abs(len(kept) - 600) <= 4  # within 0.1% of n in rank
        assert len(kept) + len(rejected) == 2000
        assert min(s.fields["clip_score"] for s in kept) > max(r.fields["clip_score"] for r in rejected)

    run(TopFraction(TopFraction.Params(method="approximate")), [sample(i, float(v)) for i, v in enumerate(values)], check)


def test_a_failing_check_fails_the_test():
    # The checks above run inside the pipeline: make sure their failures reach pytest.
    def check(kept, rejected):
        assert len(kept) == 999

    with pytest.raises(Exception, match="999"):
        run(TopFraction(), [sample(i, float(i)) for i in range(10)], check)


def test_cutoff_helpers():
    assert rank_to_keep(0.3, 10) == 3  # 0.3 * 10 is 3.0000000000000004 in floating point
    assert rank_to_keep(0.01, 10) == 1
    assert cutoff_from_quantiles([0.0, 1.0, 2.0, 3.0, 4.0], 0.25) == 3.0
    assert cutoff_from_quantiles([], 0.5) is None


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_out_of_range(fraction):
    with pytest.raises(ParamError, match="fraction"):
        TopFraction(TopFraction.Params(fraction=fraction))
