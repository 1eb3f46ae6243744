"""Recipes: YAML files naming the config sections and the ordered stages.

```yaml
name: local-sample
download: {timeout: 5, retries: 1}
resize: {image_size: 256, resize_mode: border}
output: {format: webdataset, samples_per_shard: 10000}
stages:
  - caption: {min_words: 2}
  - resolution: {min_side: 64}
  - dedup_exact:
```
Everything is checked when the recipe is loaded: unknown sections, stages and
parameters, and values of the wrong type fail with the file and line.
`--set STAGE.PARAM=VALUE` / `--set SECTION.PARAM=VALUE` overrides are typed by
the same schema.  A bare name such as `local-sample` (no such file, no
suffix) means the recipe of that name bundled with curate.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import params as typed
from pipeline.ingest.crawl_params import CrawlParams
from pipeline.media.download import DownloadParams
from pipeline.media.imaging import ResizeParams
from pipeline.core.registry import get_stage
from pipeline.core.stage import StageContext
from pipeline.engine.writers import OutputParams

SECTIONS: dict[str, type] = {
    "download": DownloadParams,
    "resize": ResizeParams,
    "output": OutputParams,
    "crawl": CrawlParams,  # only for WARC/WAT inputs
}
SECTION_HELP: dict[str, str] = {
    "download": "How images are fetched: timeouts, retries, threads, byte cap, SSRF guard, checkpointed task size.",
    "resize": "How downloaded images are decoded, resized and re-encoded for the shards.",
    "output": "The shard format and size.",
    "crawl": "How image links and captions are taken from WARC/WAT crawl files (other inputs ignore it).",
}


class RecipeError(ValueError):
    """The recipe cannot be used; the message names the file and line."""


# The bundled recipes are the checkout's top-level manifests/, which a wheel
# carries as pipeline/manifests/ (pyproject.toml, package-dir).  The installed
# place comes first: it exists only in an installed wheel, where the folder
# beside the package would be whatever site-packages/manifests happens to be.
_PACKAGE = Path(__file__).resolve().parent.parent  # pipeline/
BUNDLED_RECIPE_DIRS = (_PACKAGE / "manifests", _PACKAGE.parent / "manifests")


def bundled_recipes() -> dict[str, Path]:
    """Name -> file of every recipe bundled with curate."""
    for folder in BUNDLED_RECIPE_DIRS:
        if folder.is_dir():
            return {path.stem: path for path in sorted(folder.glob("*.yaml"))}
    return {}


def resolve_recipe(recipe: str | Path) -> Path:
    """The recipe file: `recipe` itself, or the bundled recipe a bare name (no such file, no suffix) names."""
    path = Path(recipe)
    if path.exists() or path.name != str(recipe) or path.suffix:
        return path
    bundled = bundled_recipes()
    if path.name not in bundled:
        raise RecipeError(f"{recipe}: no such file, nor a bundled recipe ({', '.join(bundled)})")
    return bundled[path.name]


@dataclass
class StageSpec:
    name: str
    params: Any
    line: int


@dataclass
class Recipe:
    name: str
    path: str
    sections: dict[str, Any]
    stages: list[StageSpec] = field(default_factory=list)

    @property
    def download(self) -> DownloadParams:
        return self.sections["download"]

    @property
    def resize(self) -> ResizeParams:
        return self.sections["resize"]

    @property
    def output(self) -> OutputParams:
        return self.sections["output"]

    @property
    def crawl(self) -> CrawlParams:
        return self.sections["crawl"]

    def build_stages(self) -> list:
        return [get_stage(spec.name)(spec.params) for spec in self.stages]

    def stage_context(self) -> StageContext:
        """What every stage is given at setup."""
        return StageContext(self.download, self.resize)

    def to_dict(self) -> dict:
        """The resolved recipe (defaults filled in): saved beside the output."""
        return {
            "name": self.name,
            **{name: dataclasses.asdict(value) for name, value in self.sections.items()},
            "stages": [{s.name: dataclasses.asdict(s.params)} for s in self.stages],
        }


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = str(resolve_recipe(path))
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise RecipeError(f"{path}: cannot read recipe: {err.strerror}") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise RecipeError(f"{path}: a recipe is a mapping with 'stages' and optional sections")
    return _parse(path, root, _parse_overrides(overrides))


def _parse(path: str, root: yaml.MappingNode, overrides: dict[str, dict[str, str]]) -> Recipe:
    name, section_values, stage_nodes = Path(path).stem, {}, None
    for key_node, value_node in root.value:
        key, where = key_node.value, f"{path} line {key_node.start_mark.line + 1}"
        if key == "name":
            name = str(_value(value_node))
        elif key in ("description", "notes"):
            continue
        elif key == "stages":
            stage_nodes = value_node
        elif key in SECTIONS:
            values = _value(value_node) or {}
            if not isinstance(values, dict):
                raise RecipeError(f"{where}: section '{key}' must be a mapping of parameters")
            section_values[key] = (values, where)
        else:
            raise RecipeError(
                f"{where}: unknown key '{key}'; expected name, description, stages, {', '.join(SECTIONS)}"
            )
    if stage_nodes is None:
        raise RecipeError(f"{path}: the recipe has no 'stages' list")
    sections = {
        section: _build(
            cls, *section_values.get(section, ({}, f"{path} ({section})")), section, overrides.pop(section, {})
        )
        for section, cls in SECTIONS.items()
    }
    stages = _parse_stages(path, stage_nodes, overrides)
    if overrides:
        names = ", ".join(sorted(overrides))
        raise RecipeError(f"--set names {names}, which is neither a section nor a stage of {path}")
    return Recipe(name=name, path=path, sections=sections, stages=stages)


def _parse_stages(path: str, node: yaml.Node, overrides: dict[str, dict[str, str]]) -> list[StageSpec]:
    if not isinstance(node, yaml.SequenceNode):
        raise RecipeError(f"{path} line {node.start_mark.line + 1}: 'stages' must be a list")
    specs: list[StageSpec] = []
    for item in node.value:
        line = item.start_mark.line + 1
        where = f"{path} line {line}"
        if isinstance(item, yaml.ScalarNode):
            stage_name, values = item.value, {}
        elif isinstance(item, yaml.MappingNode) and len(item.value) == 1:
            stage_name, values = item.value[0][0].value, _value(item.value[0][1]) or {}
        else:
            raise RecipeError(f"{where}: a stage is 'NAME' or 'NAME: {{PARAM: VALUE, ...}}'")
        if not isinstance(values, dict):
            raise RecipeError(f"{where}: parameters of stage '{stage_name}' must be a mapping")
        if any(spec.name == stage_name for spec in specs):
            raise RecipeError(f"{where}: stage '{stage_name}' appears twice")
        try:
            stage_cls = get_stage(stage_name)
        except KeyError as err:
            raise RecipeError(f"{where}: {err.args[0]}") from None
        params = _build(
            stage_cls.Params, values, where + f" (stage '{stage_name}')", stage_name, overrides.pop(stage_name, {})
        )
        specs.append(StageSpec(stage_name, params, line))
    return specs


def _build(cls: type, values: dict, where: str, scope: str, override: dict[str, str]) -> Any:
    """The params of one section or stage: the recipe's values, then its --set overrides (errors name their source)."""
    places = {name: f"--set {scope}.{name}={text}" for name, text in override.items()}
    try:
        return typed.build(cls, {**values, **override}, where, places)
    except typed.ParamError as err:
        raise RecipeError(str(err)) from None


def _value(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


def _parse_overrides(overrides: list[str]) -> dict[str, dict[str, str]]:
    parsed: dict[str, dict[str, str]] = {}
    for item in overrides:
        target, sep, value = item.partition("=")
        scope, dot, param = target.partition(".")
        if not sep or not dot or not scope or not param:
            raise RecipeError(f"--set {item!r}: expected STAGE.PARAM=VALUE or SECTION.PARAM=VALUE")
        parsed.setdefault(scope.strip(), {})[param.strip()] = value
    return parsed
