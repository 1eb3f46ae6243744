"""Stages register here by name; recipes refer to them by that name.

A stage named X is looked for first in `filters/X.py` (the convention), so a
run imports only the stages its recipe names, not every model library; any
other name makes every module of the `filters` package load.  Adding a stage
is one new file with `@register` on its class and one line of YAML.
"""
from __future__ import annotations

import importlib
import pkgutil

_STAGES: dict[str, type] = {}
_BROKEN: dict[str, str] = {}  # module -> why it could not be imported (e.g. an optional dependency missing)
_loaded = False
# The package stages live in, imported by name: the registry (core) must not
# import the stages statically, they import it.
STAGE_PACKAGE = "filters"


def register(cls: type) -> type:
    name = cls.name
    if name in _STAGES and _STAGES[name] is not cls:
        raise ValueError(f"two stages are registered as {name!r}: {_STAGES[name]} and {cls}")
    _STAGES[name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    package = importlib.import_module(STAGE_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        try:
            importlib.import_module(f"{STAGE_PACKAGE}.{module.name}")
        except ImportError as err:
            # One stage's missing dependency must not take the others down.
            _BROKEN[module.name] = str(err)
    _loaded = True


def _load_module_named(name: str) -> None:
    if name in _STAGES or not name.isidentifier():
        return
    try:
        importlib.import_module(f"{STAGE_PACKAGE}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{STAGE_PACKAGE}.{name}":
            _BROKEN[name] = str(err)  # the file is there, a dependency of it is not
    except ImportError as err:
        _BROKEN[name] = str(err)


def get_stage(name: str) -> type:
    _load_module_named(name)
    if name not in _STAGES:
        _load_all()
    try:
        return _STAGES[name]
    except KeyError:
        broken = "".join(f"; filters/{m}.py could not be imported: {why}" for m, why in sorted(_BROKEN.items()))
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(sorted(_STAGES))}{broken}") from None


def all_stages() -> dict[str, type]:
    _load_all()
    return dict(sorted(_STAGES.items()))
