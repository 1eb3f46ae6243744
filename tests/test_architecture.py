"""The layers import one way (docs/architecture.md), and stages are kinds, not flags."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.registry import all_stages
from pipeline.core.stage import DatasetStage, DownloadHook, Filter, ImageFields, Mapper, Needs, Stage

ROOT = Path(__file__).resolve().parent.parent


def builtin_stages() -> dict[str, type]:
    """The stages of filters/ (tests may register probe stages of their own in the same registry)."""
    return {name: cls for name, cls in all_stages().items() if cls.__module__.startswith("filters.")}


def test_the_import_linter_contracts_are_kept():
    """pyproject.toml's [tool.importlinter] contracts: the layers (core < helpers < stages < engine < tools < demo
    < cli) import one way, and no stage imports another."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint_imports), "--config", "pyproject.toml", "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_contract_names_every_package_of_pipeline():
    """A new sub-package of pipeline/ must be placed in a layer, or the contract would not see it."""
    import tomllib

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    layered = {name.strip() for layer in contract["layers"] for name in layer.replace(":", "|").split("|")}
    packages = {f"pipeline.{p.name}" for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").exists()}
    modules = {f"pipeline.{p.stem}" for p in (ROOT / "pipeline").glob("*.py") if p.stem != "__init__"}
    packages -= {"pipeline.manifests"}  # data only: the bundled recipes
    assert (packages | modules) - layered == set()


def test_the_wheel_lists_every_package():
    """setuptools ships only the packages pyproject.toml lists: a new sub-package must be listed too."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for top in ("pipeline", "filters")
             for init in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set()


@pytest.mark.parametrize("name", sorted(builtin_stages()))
def test_every_stage_is_one_kind(name):
    stage_cls = builtin_stages()[name]
    kinds = [kind for kind in (Filter, Mapper, DatasetStage) if issubclass(stage_cls, kind)]
    assert len(kinds) == 1, f"{name} is {kinds}"
    assert isinstance(stage_cls().needs(), Needs)


def test_the_kind_and_the_plan_agree_for_every_stage():
    """`curate stages` prints what `needs()` answers, and the planner places stages by the same answer."""
    for name, stage_cls in builtin_stages().items():
        stage = stage_cls()
        where = "after download" if stage.needs().image else "before download"
        assert where in stage.kind, name


def test_stages_no_longer_carry_kind_flags():
    """The six class flags (needs_image, uses_pixels, …) were replaced by types and `needs()`."""
    flags = ("needs_image", "uses_pixels", "computes_from_image", "uses_model", "checks_before_download",
             "checks_response", "drops")
    for name, stage_cls in builtin_stages().items():
        assert not [flag for flag in flags if hasattr(stage_cls, flag)], name


def test_hooks_are_protocols_mixed_into_stages():
    hooked = {name for name, cls in builtin_stages().items() if issubclass(cls, DownloadHook)}
    fields = {name for name, cls in builtin_stages().items() if issubclass(cls, ImageFields)}
    assert {"optout", "hashlist"} <= hooked
    assert {"dedup_image"} <= fields
    assert all(issubclass(cls, Stage) for cls in builtin_stages().values())
