"""`curate stages`: every recipe section and stage, with each parameter's type, default and help."""
from __future__ import annotations

import inspect
import shutil
import sys
import textwrap

from pipeline.core.params import describe, field_help, show_default
from pipeline.core.stage import Mapper

LEGEND = """\
What a stage is, and where it runs (with its default parameters; some stages change with theirs):
  filter            keeps or drops each sample
  mapper            changes or labels each sample, never drops one
  whole dataset     compares samples across the dataset (a shuffle)
  before download   needs only the URL and caption: listed before every image stage, the rows it
                    drops are never fetched
  after download    needs the image
  label-only        never drops a sample with these parameters (a filter set to tag, or a mapper)"""

# Parameters that mean the same in every model stage (README, "Model stages"), when the stage says nothing.
COMMON_HELP = {
    "model": "open_clip model name",
    "pretrained": "open_clip pretrained tag, or a local checkpoint path",
    "model_config": "open_clip config JSON, for an architecture open_clip does not list",
    "device": "torch device: cpu, cuda, cuda:1, ...",
    "batch_size": "samples per model call",
}


def render() -> str:
    from pipeline.engine.recipe import SECTION_HELP, SECTIONS
    from pipeline.core.registry import all_stages

    width = min(shutil.get_terminal_size((100, 24)).columns, 100)
    parts = ["Recipe sections (set with SECTION: {PARAM: VALUE} or --set SECTION.PARAM=VALUE):", ""]
    for name, params_cls in SECTIONS.items():
        parts += [name, *_wrap(SECTION_HELP.get(name, ""), width, "    "), *_params(params_cls, width), ""]
    parts += ["Stages (listed under stages:, tuned with --set STAGE.PARAM=VALUE):", "", LEGEND, ""]
    for name, stage_cls in all_stages().items():
        parts += [f"{name}  [{stage_kind(stage_cls)}]", *_wrap(first_paragraph(stage_cls), width, "    ")]
        parts += [*_params(stage_cls.Params, width), ""]
    return "\n".join(parts).rstrip() + "\n"


def stage_kind(stage_cls: type) -> str:
    """The kind of a stage with default parameters, as the stage instance tells it."""
    try:
        stage = stage_cls()
    except (TypeError, ValueError) as err:  # defaults that are not a valid configuration
        return f"needs parameters: {err}"
    return f"{stage.kind}, label-only" if stage.label_only and not isinstance(stage, Mapper) else stage.kind


def first_paragraph(stage_cls: type) -> str:
    """The first paragraph of the stage's class docstring, else of its module's, as one line."""
    doc = inspect.getdoc(stage_cls) if stage_cls.__doc__ else None
    doc = doc or inspect.getdoc(sys.modules[stage_cls.__module__]) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _params(params_cls: type, width: int) -> list[str]:
    helps = field_help(params_cls)
    lines = []
    for name, type_name, default in describe(params_cls):
        lines.append(f"    {name}: {type_name} = {show_default(default)}")  # not wrapped: a default is one value
        lines += _wrap(helps[name] or COMMON_HELP.get(name, ""), width, "        ")
    return lines


def _wrap(text: str, width: int, indent: str) -> list[str]:
    if not text:
        return []
    return textwrap.wrap(
        text, width, initial_indent=indent, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
    )
