"""`curate stages`: sections and stages, each stage's real kind, full description and per-parameter help."""
from __future__ import annotations

import dataclasses
import re

import pytest

from pipeline.cli import main
from pipeline.core.registry import get_stage


@pytest.fixture(scope="module")
def listing() -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["stages"]) == 0
    return out.getvalue()


def _block(listing: str, name: str) -> str:
    """The lines of one section or stage: from its heading to the next blank line."""
    match = re.search(rf"^{name}(  \[[^\]]*\])?\n(.*?)(\n\n|\Z)", listing, re.M | re.S)
    assert match, f"{name} is not listed"
    return match.group(0)


@pytest.mark.parametrize("section, line, help_text", [
    ("download", "threads: int = 32", "requests in flight per worker process at the start"),
    ("resize", "resize_mode: one of no, keep_ratio, center_crop, border = 'border'", "border pads"),
    ("output", "samples_per_shard: int = 10000", "input rows per block"),
    ("crawl", "surrounding_words: int = 0", "words of page text"),
])
def test_config_sections_are_listed_with_their_parameters(listing, section, line, help_text):
    block = _block(listing, section)
    assert f"    {line}\n" in block
    assert help_text in block


@pytest.mark.parametrize("stage, kind", [
    ("dedup_exact", "whole dataset, after download"),
    ("dedup_image", "whole dataset, after download"),
    ("top_fraction", "whole dataset, after download"),
    ("dedup_caption", "whole dataset, before download"),
    ("caption", "filter, before download"),
    ("resolution", "filter, after download"),
    ("language", "filter, before download, label-only"),
    ("bias_audit", "mapper, before download"),
    ("face_blur", "mapper, after download"),
    ("nsfw", "filter, after download, label-only"),
])
def test_each_stage_is_labelled_by_its_real_kind(listing, stage, kind):
    assert f"\n{stage}  [{kind}]\n" in listing


def test_the_kind_comes_from_the_instance_and_its_params():
    dedup_caption, nsfw, language = get_stage("dedup_caption"), get_stage("nsfw"), get_stage("language")
    assert dedup_caption(dedup_caption.Params(keep="largest")).kind == "whole dataset, after download"
    assert not nsfw(nsfw.Params(action="drop")).label_only
    assert not language(language.Params(languages=("en",))).label_only


def test_the_whole_first_paragraph_of_the_description_is_shown(listing):
    block = " ".join(_block(listing, "face_blur").split())
    assert "as img2dataset's `bbox_col` and DataComp's face blurring do. A mapper stage: it never drops." in block


def test_parameters_carry_their_help(listing):
    block = _block(listing, "language")
    assert re.search(r"    languages: list of str = \[\]\n        keep only these .*empty: all languages", block)
    assert "    model_path: str | None = null\n" in block


def test_field_help_reads_metadata_then_trailing_comment_then_comment_block():
    from pipeline.core.params import field_help

    @dataclasses.dataclass(frozen=True)
    class Params:
        a: int = dataclasses.field(default=1, metadata={"help": "from metadata"})  # not this comment
        b: int = 2  # trailing comment
        # A block of
        # two lines.
        c: str = "#not a comment"
        d: int = 4

        # Separated from e by a blank line: no field's help.

        e: int = 5

    assert field_help(Params) == {
        "a": "from metadata", "b": "trailing comment", "c": "A block of two lines.", "d": "", "e": "",
    }


def test_every_section_and_stage_parameter_has_a_help_line(listing):
    """A parameter line is always followed by its (deeper-indented) help line."""
    lines = listing.splitlines()
    parameter_lines = [i for i, line in enumerate(lines) if re.match(r"    \w+: .* = ", line)]
    assert len(parameter_lines) > 100
    bare = [lines[i].strip() for i in parameter_lines if not lines[i + 1].startswith("        ")]
    assert bare == []
