"""Typed config dataclasses <-> argparse options, so each option is declared once.

A field becomes ``--field-name`` (underscores to dashes) with its default, its type and the
``help`` from ``field(metadata={"help": ...})``. Metadata keys:

- ``help``: the help text (the default is appended automatically);
- ``positional``: the field is a positional argument (``nargs="+"`` for list fields; ``"*"`` or ``"?"``
  when the field has a default);
- ``choices``: allowed values;
- ``flag``: an alternative option string, e.g. ``"-o"``;
- ``repeat``: a ``list`` field given as a repeated option (``--image A --image B``);
- ``fields``: for a field whose type is itself a dataclass (e.g. a ``ParallelLayout``), which of its
  fields become options (default: all); they are declared by that dataclass, not repeated here;
- ``group``: the title of an argument group the option is listed under in ``--help`` (options
  shared by several commands, e.g. those of an OpenAI-compatible endpoint, come as one group);
- ``was``: earlier names of the field (``("max_seq_len",)``): given on the command line or to the API,
  they are refused with one line naming the new option (a script written for the old name is told
  what to change instead of getting "unrecognized arguments").

``bool`` fields become ``--x/--no-x``; ``list[T]`` fields take one or more values; ``Optional[T]``
fields default to ``None``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any, TypeVar

from megatron_vlm.errors import ConfigError

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _selected_fields(cls: type, names: tuple[str, ...] | None) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if names is None or f.name in names]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, names: tuple[str, ...] | None = None) -> None:
    """Add one option per field of dataclass ``cls`` (only ``names`` if given) to ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in _selected_fields(cls, names):
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            add_dataclass_arguments(_group(parser, f.metadata.get("group")), tp, f.metadata.get("fields"))
        else:
            _add_field(parser, f, tp)
        for old in f.metadata.get("was", ()):
            parser.add_argument(_option(old), action=_Renamed, new=_option(f.name))


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Renamed(argparse.Action):
    """A renamed option's old spelling (hidden from ``--help``): refused with the new name."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", help=argparse.SUPPRESS)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now {self.new}: give {self.new} instead (the same value)")


def renamed_options(cls: type) -> dict[str, str]:
    """Old option names -> current ones (the ``was`` metadata), nested dataclasses flattened."""
    return {old: name for name, (_, f) in _option_fields(cls).items() for old in f.metadata.get("was", ())}


def _group(parser: argparse.ArgumentParser, title: str | None):
    """``parser``, or its argument group titled ``title`` (made on first use)."""
    if title is None:
        return parser
    existing = [g for g in parser._action_groups if g.title == title]
    return existing[0] if existing else parser.add_argument_group(title)


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    parser = _group(parser, f.metadata.get("group"))
    help_text = f.metadata.get("help", "")
    kwargs: dict[str, Any] = {"help": help_text}
    default = f.default
    if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    if "choices" in f.metadata:
        kwargs["choices"] = f.metadata["choices"]
    origin = typing.get_origin(tp)
    if f.metadata.get("positional"):
        optional = default is not dataclasses.MISSING
        if origin is list:
            kwargs["nargs"] = "*" if optional else "+"
            kwargs["type"] = typing.get_args(tp)[0]
        else:
            kwargs["type"] = tp
            if optional:
                kwargs["nargs"] = "?"
        if optional:
            kwargs["default"] = default
        kwargs["metavar"] = f.metadata.get("metavar", f.name.upper())
        parser.add_argument(f.name, **kwargs)
        return
    names = [_option(f.name)]
    if "flag" in f.metadata:
        names.insert(0, f.metadata["flag"])
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is list and f.metadata.get("repeat"):
        kwargs["action"] = "append"
        kwargs["type"] = typing.get_args(tp)[0]
    elif origin is list:
        kwargs["nargs"] = "+"
        kwargs["type"] = typing.get_args(tp)[0]
    else:
        kwargs["type"] = tp
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
        if help_text and default not in (None, "", []):
            kwargs["help"] = f"{help_text} (default: {default})"
    if "metavar" in f.metadata:
        kwargs["metavar"] = f.metadata["metavar"]
    parser.add_argument(*names, dest=f.name, **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, names: tuple[str, ...] | None = None) -> T:
    """Build ``cls`` from the parsed options that ``add_dataclass_arguments`` declared."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in _selected_fields(cls, names):
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            values[f.name] = dataclass_from_args(tp, args, f.metadata.get("fields"))
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return cls(**values)


def option_names(cls: type, names: tuple[str, ...] | None = None) -> list[str]:
    """The (flattened) option names ``add_dataclass_arguments`` declares for ``cls``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in _selected_fields(cls, names):
        tp = _unwrap_optional(hints[f.name])
        out += option_names(tp, f.metadata.get("fields")) if dataclasses.is_dataclass(tp) else [f.name]
    return out


def dataclass_from_options(cls: type[T], options: dict[str, Any]) -> T:
    """Build ``cls`` from keyword options named as on the command line (``tp=2``, not ``layout=...``),
    as the Python API takes them; an unknown keyword is a ``TypeError`` naming it, a value of the wrong type
    or not among the option's choices a ``ConfigError`` naming the option (what argparse checks on the
    command line)."""
    known = option_names(cls)
    renamed = renamed_options(cls)
    if old := sorted(set(options) & set(renamed)):
        raise TypeError(f"{old[0]} is now {renamed[old[0]]} (option of {cls.__name__}): give {renamed[old[0]]} instead")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(known)}")
    fields = _option_fields(cls)
    for name, value in options.items():
        tp, f = fields[name]
        if not _fits(value, tp):
            raise ConfigError(f"--{name.replace('_', '-')}: expected {_type_name(tp)}, got {value!r}")
        choices = f.metadata.get("choices")
        values = value if isinstance(value, (list, tuple)) else [value]
        if choices is not None and value is not None and any(v not in choices for v in values):
            raise ConfigError(f"--{name.replace('_', '-')}: {value!r} is not one of {', '.join(map(str, choices))}")
    return dataclass_from_args(cls, argparse.Namespace(**options))


def _option_fields(cls: type, names: tuple[str, ...] | None = None) -> dict[str, tuple[Any, dataclasses.Field]]:
    """Option name -> (declared type, field), nested dataclasses flattened as ``option_names`` does."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in _selected_fields(cls, names):
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out.update(_option_fields(tp, f.metadata.get("fields")))
        else:
            out[f.name] = (hints[f.name], f)
    return out


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the declared type ``tp`` (a path may be given for a ``str``; an int for a float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        inner = typing.get_args(tp)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_fits(v, inner[0]) for v in value)
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, (str, os.PathLike))
    return isinstance(value, tp) if isinstance(tp, type) else True


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string or path", bool: "True or False",
            type(None): "None"}.get(tp, getattr(tp, "__name__", str(tp)))
