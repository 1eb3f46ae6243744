"""The bundled recipes (top-level manifests/) ship in the wheel, and a bare name finds them."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.demo.run_demo import DEFAULT_RECIPE
from pipeline.engine.recipe import RecipeError, load_recipe, resolve_recipe

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(path.name for path in (REPO / "manifests").glob("*.yaml"))
# What the build reads: pyproject.toml names README.md as the readme.
BUILD_SOURCES = ("pyproject.toml", "README.md", "pipeline", "filters", "manifests")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy: a build leaves build/ and *.egg-info in its source tree."""
    pytest.importorskip("setuptools")
    temp = tmp_path_factory.mktemp("wheel")
    source = temp / "source"
    source.mkdir()
    for name in BUILD_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "-w", str(temp / "dist"), str(source)],
        check=True, capture_output=True,
    )
    (built,) = (temp / "dist").glob("curate-*.whl")
    return built


def test_wheel_carries_every_bundled_recipe(wheel):
    assert RECIPES, "manifests/ has no recipes"
    with zipfile.ZipFile(wheel) as archive:
        for name in RECIPES:
            assert archive.read(f"pipeline/manifests/{name}") == (REPO / "manifests" / name).read_bytes()


def test_the_installed_command_is_the_entry_point_that_exits_quickly(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt")]
        assert "curate = pipeline.cli:entry_point" in archive.read(entry_points).decode().splitlines()


def test_installed_wheel_resolves_a_bare_name_to_its_own_copy(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # a pure-Python wheel unpacked is its installed layout
    probe = "from pipeline.engine.recipe import load_recipe; print(load_recipe('local-sample').path)"
    # cwd and PYTHONPATH keep the checkout off sys.path: pipeline comes from the unpacked wheel.
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                            check=True, capture_output=True, text=True)
    assert Path(result.stdout.strip()) == site / "pipeline" / "manifests" / "local-sample.yaml"


def test_bare_name_resolves_to_the_bundled_recipe():
    recipe = load_recipe("local-sample")
    assert Path(recipe.path) == REPO / "manifests" / "local-sample.yaml"
    assert recipe.name == "local-sample"
    assert resolve_recipe(DEFAULT_RECIPE) == REPO / "manifests" / "local-sample.yaml"


def test_an_existing_file_wins_over_the_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("local-sample").write_text("name: mine\nstages: [caption]\n")
    assert load_recipe("local-sample").name == "mine"


def test_unknown_bare_name_lists_the_bundled_recipes():
    with pytest.raises(RecipeError, match=r"no-such-recipe: no such file, nor a bundled recipe \(.*laion-style"):
        load_recipe("no-such-recipe")


def test_paths_are_never_taken_for_names(tmp_path):
    for missing in (tmp_path / "local-sample", "local-sample.yaml"):
        with pytest.raises(RecipeError, match="cannot read recipe"):
            load_recipe(missing)


@pytest.mark.parametrize("command", ["run", "demo"])
def test_help_mentions_bundled_recipe_names(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "bundled" in capsys.readouterr().out
