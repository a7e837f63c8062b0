"""Typed config dataclasses <-> argparse options, so each option is declared once.

A field becomes ``--field-name`` (underscores to dashes) with its default, its type and the
``help`` from ``field(metadata={"help": ...})``. Metadata keys:

- ``help``: the help text (the default is appended automatically);
- ``positional``: the field is a positional argument (``nargs="+"`` for list fields);
- ``choices``: allowed values;
- ``flag``: an alternative option string, e.g. ``"-o"``;
- ``group``: the title of an argument group the option is listed under in ``--help`` (options
  shared by several commands, e.g. those of an OpenAI-compatible endpoint, come as one group).

``bool`` fields become ``--x/--no-x``; ``list[T]`` fields take one or more values; ``Optional[T]``
fields default to ``None``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        title = f.metadata.get("group")
        target = parser if title is None else groups.setdefault(title, parser.add_argument_group(title))
        tp = _unwrap_optional(hints[f.name])
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"help": help_text}
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        origin = typing.get_origin(tp)
        if f.metadata.get("positional"):
            if origin is list:
                kwargs["nargs"] = "+"
                kwargs["type"] = typing.get_args(tp)[0]
            else:
                kwargs["type"] = tp
            kwargs["metavar"] = f.metadata.get("metavar", f.name.upper())
            target.add_argument(f.name, **kwargs)
            continue
        names = ["--" + f.name.replace("_", "-")]
        if "flag" in f.metadata:
            names.insert(0, f.metadata["flag"])
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
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
        target.add_argument(*names, dest=f.name, **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed options that ``add_dataclass_arguments`` declared."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli") is not False and hasattr(args, f.name)
    }
    return cls(**values)
