"""`curate`'s exit: main's code, with the objects alive at the end moved out of the final collection."""
from __future__ import annotations

import gc

import pytest

from pipeline import cli


def test_the_command_exits_with_mains_code_after_collecting_and_freezing(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 3)
    monkeypatch.setattr(gc, "collect", lambda: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    with pytest.raises(SystemExit) as exit_:
        cli.entry_point()
    assert exit_.value.code == 3
    # Garbage first (its finalizers flush files), then the freeze.
    assert calls == ["main", "collect", "freeze"]


def test_an_error_in_main_is_raised_as_it_was_and_nothing_is_frozen(monkeypatch):
    def fails():
        raise RuntimeError("boom")

    frozen = []
    monkeypatch.setattr(cli, "main", fails)
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    with pytest.raises(RuntimeError, match="boom"):
        cli.entry_point()
    assert not frozen
