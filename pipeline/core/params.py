"""Typed parameters for stages and config sections.

Every stage and section declares its parameters as a frozen dataclass.  Recipe
values and `--set` strings are checked against the field types here, so a typo
or a wrong type fails before the pipeline is built, never hours into a run.
Supported field types: bool, int, float, str, Literal[...] (a choice), tuples
of those (`tuple[str, ...]`), and `X | None`.

A field's help text (`curate stages`) is its `field(metadata={"help": ...})`,
else the `#` comment on its line, else the comment lines right above it: the
comments the Params classes carry anyway are their documentation.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from typing import Any, Literal, get_args, get_origin

import yaml


class ParamError(ValueError):
    """A parameter value does not fit its declared type."""


def build(params_cls: type, values: dict[str, Any], where: str, places: dict[str, str] | None = None) -> Any:
    """Instantiate `params_cls` from recipe values, checking names and types.

    Errors name `where` (the recipe file and line), or for a value listed in
    `places` the place it came from instead (e.g. "--set download.threads=abc").
    """
    places = places or {}
    hints = typing.get_type_hints(params_cls)
    known = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        from_places = [places[name] for name in unknown if name in places]
        if from_places:
            named = f"{from_places[0]}: unknown parameter"
        else:
            named = f"{where}: unknown parameter(s) {', '.join(unknown)}"
        raise ParamError(f"{named}; known: {', '.join(sorted(known)) or '(none)'}")
    checked = {
        name: coerce(hints[name], value, places.get(name, f"{where}.{name}")) for name, value in values.items()
    }
    return params_cls(**checked)


def coerce(annotation: Any, value: Any, where: str) -> Any:
    """Check `value` against `annotation`, converting strings from the command line."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, where)
            except ParamError as err:
                errors.append(str(err))
        raise ParamError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {annotation}")
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ParamError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        (item_type, _ellipsis) = get_args(annotation)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ParamError(f"{where}: expected a list, got {value!r}")
        return tuple(coerce(item_type, v, f"{where}[{i}]") for i, v in enumerate(value))
    return _coerce_scalar(annotation, value, where)


def _coerce_scalar(annotation: Any, value: Any, where: str) -> Any:
    if isinstance(value, str) and annotation is not str:
        # Values from --set arrive as text; read them as YAML scalars.
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ParamError(f"{where}: cannot read {value!r}: {err}") from None
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        raise TypeError(f"{where}: unsupported parameter type {annotation}")
    raise ParamError(f"{where}: expected {annotation.__name__}, got {value!r}")


def describe(params_cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) for each parameter: for help texts and docs."""
    hints = typing.get_type_hints(params_cls)
    rows = []
    for f in dataclasses.fields(params_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        rows.append((f.name, _type_name(hints[f.name]), default))
    return rows


def field_help(params_cls: type) -> dict[str, str]:
    """Each parameter's help text: its metadata "help", else its `#` comment (see the module doc)."""
    comments = _field_comments(params_cls)
    return {f.name: f.metadata.get("help") or comments.get(f.name, "") for f in dataclasses.fields(params_cls)}


def _field_comments(params_cls: type) -> dict[str, str]:
    """Field name -> its trailing comment, else the comment lines right above it ({} without source)."""
    try:
        source = textwrap.dedent(inspect.getsource(params_cls))
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    names = {f.name for f in dataclasses.fields(params_cls)}
    comments, first_on_line, fields = {}, {}, {}  # by line number
    for token, following in zip(tokens, [*tokens[1:], None]):
        line = token.start[0]
        if token.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.NEWLINE):
            continue
        first_on_line.setdefault(line, token)
        if token.type == tokenize.COMMENT:
            comments[line] = token.string.lstrip("#").strip()
        elif first_on_line[line] is token and token.string in names and following and following.string == ":":
            fields[line] = token.string
    help_texts = {}
    for line, name in fields.items():
        above, previous = [], line - 1
        while previous in comments and first_on_line[previous].type == tokenize.COMMENT:
            above.insert(0, comments[previous])
            previous -= 1
        help_texts[name] = comments.get(line) or " ".join(above)
    return help_texts


def show_default(value: Any) -> str:
    """A default as a recipe would write it: [] for an empty tuple, null for None."""
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def _type_name(annotation: Any) -> str:
    """The type as a recipe writer reads it: "int", "str | None", "list of str", "one of a, b"."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
