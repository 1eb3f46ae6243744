import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.engine.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_bundled_recipe_loads_with_defaults_filled():
    recipe = load_recipe("manifests/local-sample.yaml")
    assert [s.name for s in recipe.stages] == ["caption", "optout", "resolution", "dedup_exact", "dedup_image"]
    assert recipe.resize.image_size == 256
    assert recipe.download.allow_private_network is False
    assert recipe.output.samples_per_shard == 100


def test_unknown_stage_names_the_line(tmp_path):
    path = write(tmp_path, """\
        stages:
          - caption
          - captoin: {min_chars: 3}
        """)
    with pytest.raises(RecipeError, match=r"line 3: unknown stage 'captoin'"):
        load_recipe(path)


def test_wrong_parameter_type_names_line_and_parameter(tmp_path):
    path = write(tmp_path, """\
        stages:
          - caption: {min_chars: many}
        """)
    with pytest.raises(RecipeError, match=r"line 2 \(stage 'caption'\)\.min_chars: expected int, got 'many'"):
        load_recipe(path)


def test_unknown_parameter_lists_known_ones(tmp_path):
    path = write(tmp_path, "stages:\n  - resolution: {min_sid: 3}\n")
    with pytest.raises(RecipeError, match=r"unknown parameter\(s\) min_sid; known: .*min_side"):
        load_recipe(path)


def test_unknown_section_and_duplicate_stage(tmp_path):
    with pytest.raises(RecipeError, match="unknown key 'donwload'"):
        load_recipe(write(tmp_path, "donwload: {}\nstages: []\n"))
    with pytest.raises(RecipeError, match="appears twice"):
        load_recipe(write(tmp_path, "stages: [caption, caption]\n"))


def test_set_overrides_are_typed_by_schema():
    recipe = load_recipe(
        "manifests/local-sample.yaml",
        ["caption.min_chars=12", "download.timeout=2.5", "resize.resize_mode=center_crop",
         "download.allow_private_network=true", "resolution.max_side=none"],
    )
    assert recipe.stages[0].params.min_chars == 12
    assert recipe.download.timeout == 2.5
    assert recipe.resize.resize_mode == "center_crop"
    assert recipe.download.allow_private_network is True
    assert recipe.stages[2].params.max_side is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("caption.min_chars=abc", "expected int"),
        ("resize.resize_mode=squash", "not one of"),
        ("nosuch.x=1", "neither a section nor a stage"),
        ("caption=3", "expected STAGE.PARAM=VALUE"),
        ("caption.nope=3", "unknown parameter"),
    ],
)
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("manifests/local-sample.yaml", [override])


def test_every_bundled_manifest_loads():
    import glob

    paths = sorted(glob.glob("manifests/*.yaml"))
    assert paths
    for path in paths:
        load_recipe(path)


def test_a_recipe_imports_only_the_stage_modules_it_names():
    """Loading a recipe must not import every stage's libraries (start-up time of every run)."""
    code = (
        "import sys; from pipeline.engine.recipe import load_recipe; "
        "load_recipe('manifests/local-sample.yaml'); "
        "print(sorted(m for m in sys.modules if m.startswith('filters.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    loaded = set(eval(result.stdout))
    assert {"filters.caption", "filters.optout", "filters.resolution", "filters.dedup_exact", "filters.dedup_image"} <= loaded
    assert not loaded & {"filters.decontaminate", "filters.dedup_caption", "filters.clip_score", "filters.nsfw"}


def test_a_run_over_a_url_list_does_not_import_the_crawl_reader(tmp_path):
    """The recipe, the reading step and a Parquet read leave the WARC/HTML machinery (and langcodes' data)
    unimported: ~0.1 s of every run's start-up."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": ["http://example.com/a.jpg"], "caption": ["a cat"]}), tmp_path / "urls.parquet")
    code = (
        "import sys; from pipeline.engine.recipe import load_recipe; import pipeline.engine.read_inputs; "
        "from pipeline.ingest.readers import read_rows; "
        "load_recipe('manifests/local-sample.yaml'); "
        f"rows = list(read_rows({str(tmp_path / 'urls.parquet')!r}, 'parquet')); "
        "print(len(rows), 'pipeline.ingest.crawl' in sys.modules, 'langcodes' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.split() == ["1", "False", "False"]


def test_a_stage_outside_the_naming_convention_is_still_found(tmp_path, monkeypatch):
    import filters
    from pipeline.core import registry

    (tmp_path / "extra_stages.py").write_text(textwrap.dedent("""\
        from pipeline.core.stage import SampleStage
        from pipeline.core.registry import register

        @register
        class OddlyNamed(SampleStage):
            name = "oddly_named"
        """))
    monkeypatch.setattr(filters, "__path__", [*filters.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_STAGES", dict(registry._STAGES))
    assert registry.get_stage("oddly_named").__name__ == "OddlyNamed"
    with pytest.raises(KeyError, match="known stages: .*oddly_named"):
        registry.get_stage("no_such_stage")


@pytest.mark.parametrize(
    "override, message",
    [
        ("download.threads=abc", "--set download.threads=abc: expected int, got 'abc'"),
        ("caption.min_chars=abc", "--set caption.min_chars=abc: expected int, got 'abc'"),
        ("resize.resize_mode=squash", "--set resize.resize_mode=squash: 'squash' is not one of"),
        ("download.thread=8", "--set download.thread=8: unknown parameter; known: "),
        ("resolution.min_sid=3", "--set resolution.min_sid=3: unknown parameter; known: "),
    ],
)
def test_a_bad_set_value_is_reported_as_the_set_not_the_recipe_file(override, message):
    """The recipe file is fine: the error must point at the command line, not at a line of the file."""
    with pytest.raises(RecipeError) as caught:
        load_recipe("manifests/local-sample.yaml", [override])
    assert str(caught.value).startswith(message)
    assert "local-sample.yaml" not in str(caught.value)


def test_a_bad_recipe_value_still_names_the_file_when_set_overrides_other_params(tmp_path):
    path = write(tmp_path, "download: {threads: many}\nstages: [caption]\n")
    with pytest.raises(RecipeError, match=r"r\.yaml line 1\.threads: expected int, got 'many'"):
        load_recipe(path, ["download.timeout=3"])


def test_curate_run_reports_the_bad_set(tmp_path, capsys):
    from pipeline.cli import main

    code = main(["run", "--recipe", "manifests/local-sample.yaml", "--input", str(tmp_path / "urls.csv"),
                 "--output", str(tmp_path / "out"), "--set", "download.threads=abc"])
    assert code == 2
    assert "curate: error: --set download.threads=abc: expected int, got 'abc'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
