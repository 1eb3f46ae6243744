"""One `inspect.signature` per function for Beam's DoFn introspection, instead of one per question.

Beam checks every DoFn for state and timers (`userstate.get_dofn_specs`)
when a ParDo is applied, when the graph is translated and when a worker
builds a stage's operations.  Each check asks `get_function_args_defaults`,
that is `inspect.signature`, about each of the DoFn's ~30 methods.  A 50-stage
recipe makes ~1,000 such checks: 30,000 signatures, 1.0 s of a 3.6 s ten-row
run, and again in every worker for every stage.  A function's signature is
fixed once it is defined, so it is computed once per function here (Beam's
own pull request #9925 proposed the same memo; it was never merged).

The memo answers only for plain functions and methods bound to them, and
only while the function's code, defaults, `__wrapped__` and `__signature__`
are the very objects it saw; anything else goes to Beam's function as before.
"""
from __future__ import annotations

import threading
import types
import weakref

from apache_beam.transforms import core

_beam_function = core.get_function_args_defaults
_memo: "weakref.WeakKeyDictionary[types.FunctionType, dict]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _identity(function: types.FunctionType) -> tuple:
    """What a function's signature is computed from (besides whether it is bound)."""
    extra = function.__dict__
    return (function.__code__, function.__defaults__, function.__kwdefaults__,
            extra.get("__wrapped__"), extra.get("__signature__"))


def get_function_args_defaults(f):
    """Beam's `core.get_function_args_defaults`, memoized per function (fresh lists each call)."""
    bound = isinstance(f, types.MethodType)
    function = f.__func__ if bound else f
    if type(function) is not types.FunctionType:
        return _beam_function(f)
    identity = _identity(function)
    with _lock:
        entry = _memo.get(function, {}).get(bound)
    if entry is None or any(a is not b for a, b in zip(entry[0], identity)):
        args, defaults = _beam_function(f)
        entry = (identity, args, defaults)
        with _lock:
            _memo.setdefault(function, {})[bound] = entry
    return list(entry[1]), list(entry[2])


def install() -> None:
    """Routes Beam's own calls (`core.get_function_arguments`, the Map/FlatMap wrappers) through the memo."""
    core.get_function_args_defaults = get_function_args_defaults
