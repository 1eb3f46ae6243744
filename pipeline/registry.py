"""Stages register here by name; recipes refer to them by that name.

Every module in the `filters` package is imported on first lookup, so adding a
stage is one new file with `@register` on its class and one line of YAML.
"""
from __future__ import annotations

import importlib
import pkgutil

_STAGES: dict[str, type] = {}
_loaded = False


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
    import filters

    for module in pkgutil.iter_modules(filters.__path__):
        importlib.import_module(f"filters.{module.name}")
    _loaded = True


def get_stage(name: str) -> type:
    _load_all()
    try:
        return _STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(sorted(_STAGES))}") from None


def all_stages() -> dict[str, type]:
    _load_all()
    return dict(sorted(_STAGES.items()))
