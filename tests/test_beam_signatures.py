"""The memo of function signatures behind Beam's DoFn introspection (pipeline.engine.beam_signatures)."""
from __future__ import annotations

import functools

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.transforms import core, userstate
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from pipeline.engine import beam_signatures

COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())


class _Stateful(beam.DoFn):
    def process(self, element, count=beam.DoFn.StateParam(COUNT)):
        yield element


class _Plain(beam.DoFn):
    def process(self, element, prefix="p"):
        yield prefix + element


def _function(a, b=2, *rest, c=3):
    return a


@pytest.fixture
def counted_beam_calls(monkeypatch):
    """Beam's own function, counting its calls; the memo installed and emptied for the test."""
    calls = []
    original = beam_signatures._beam_function

    def counting(f):
        calls.append(f)
        return original(f)

    monkeypatch.setattr(beam_signatures, "_beam_function", counting)
    monkeypatch.setattr(beam_signatures, "_memo", type(beam_signatures._memo)())
    monkeypatch.setattr(core, "get_function_args_defaults", beam_signatures.get_function_args_defaults)
    return calls


@pytest.mark.parametrize("f", [
    _function, _Plain().process, _Stateful().process, lambda x, y=1: x, functools.partial(_function, 1), len,
])
def test_answers_as_beam_does(counted_beam_calls, f):
    expected = beam_signatures._beam_function(f)
    assert beam_signatures.get_function_args_defaults(f) == expected
    assert beam_signatures.get_function_args_defaults(f) == expected  # from the memo, where memoized


def test_a_function_is_inspected_once_bound_or_not(counted_beam_calls):
    for _ in range(3):
        beam_signatures.get_function_args_defaults(_Plain().process)  # a new bound method each time
        beam_signatures.get_function_args_defaults(_Plain.process)
    asked = [(getattr(f, "__func__", f), hasattr(f, "__self__")) for f in counted_beam_calls]
    assert asked == [(_Plain.process, True), (_Plain.process, False)]  # once bound (self dropped), once not
    assert beam_signatures.get_function_args_defaults(_Plain().process) == (["element", "prefix"], ["p"])
    assert beam_signatures.get_function_args_defaults(_Plain.process) == (["self", "element", "prefix"], ["p"])


def test_answers_are_fresh_lists(counted_beam_calls):
    args, defaults = beam_signatures.get_function_args_defaults(_function)
    args.append("changed")
    defaults.clear()
    assert beam_signatures.get_function_args_defaults(_function) == (["a", "b"], [2])


def test_new_defaults_are_seen(counted_beam_calls):
    def f(x, y=1):
        return x

    assert beam_signatures.get_function_args_defaults(f) == (["x", "y"], [1])
    f.__defaults__ = (5,)
    assert beam_signatures.get_function_args_defaults(f) == (["x", "y"], [5])


def test_dofn_state_is_still_found_and_checks_reuse_the_memo(counted_beam_calls):
    state_specs, _timers = userstate.get_dofn_specs(_Stateful())
    assert state_specs == {COUNT}
    first = len(counted_beam_calls)
    assert first > 10  # every method of the DoFn once
    for _ in range(5):
        assert userstate.get_dofn_specs(_Stateful()) == ({COUNT}, set())
        assert userstate.is_stateful_dofn(_Stateful())
        assert not userstate.is_stateful_dofn(_Plain())
    plain_methods = len(counted_beam_calls) - first
    assert plain_methods < first  # _Plain's own process only: the methods both inherit from DoFn were memoized


def test_a_stateful_pipeline_runs_with_the_memo_installed(counted_beam_calls):
    from apache_beam.testing.util import assert_that, equal_to

    with beam.Pipeline("apache_beam.runners.portability.fn_api_runner.FnApiRunner") as pipeline:
        keyed = pipeline | beam.Create([("k", "a"), ("k", "b")])
        assert_that(keyed | beam.ParDo(_Stateful()), equal_to([("k", "a"), ("k", "b")]))
