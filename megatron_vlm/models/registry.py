"""The registry of model families, keyed by the Hugging Face ``model_type`` of a ``config.json``.

A third family is a new folder ``megatron_vlm/models/<family>/`` (its ``FAMILY``, see
``megatron_vlm.models.family``) plus one line in ``FAMILIES`` (docs/architecture.md, "Model
families"). Every stage finds the family of a checkpoint, dataset or pool here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from megatron_vlm.errors import ConfigError
from megatron_vlm.models.config_json import load_hf_config
from megatron_vlm.models.family import ModelFamily

FAMILIES: dict[str, str] = {  # HF model_type -> the package defining its FAMILY
    "qwen2_5_vl": "megatron_vlm.models.qwen25vl",
    "qwen3_vl": "megatron_vlm.models.qwen3vl",
}
DEFAULT_FAMILY = "qwen2_5_vl"  # where an option does not name one (the stack's first family)


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def families() -> list[ModelFamily]:
    """Every registered family, in registry order."""
    return [get_family(model_type) for model_type in FAMILIES]


def get_family(model_type: str) -> ModelFamily:
    """The family registered for ``model_type``, or a ``ConfigError`` listing the known ones."""
    if model_type not in FAMILIES:
        raise ConfigError(f"unknown model family {model_type!r}; this stack handles {', '.join(FAMILIES)} "
                          "(docs/architecture.md says how to add one)")
    return importlib.import_module(FAMILIES[model_type]).FAMILY


def family_of(source: str | Path | dict[str, Any], *, name: str | None = None) -> ModelFamily:
    """The family of a ``config.json`` (dict, file or checkpoint directory), by its ``model_type``."""
    raw = load_hf_config(source)
    where = name or (str(source) if not isinstance(source, dict) else "config.json")
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(f"{where}: wrong architecture: model_type={model_type!r}, "
                          f"architectures={raw.get('architectures') or []}; this stack handles "
                          f"{', '.join(repr(k) for k in FAMILIES)}")
    return get_family(model_type)


def read_arch(source: str | Path | dict[str, Any], *, name: str | None = None):
    """The shapes of any registered family's ``config.json`` (its family's ``arch``); ``.family`` names it."""
    raw = load_hf_config(source)
    where = name or (str(source) if not isinstance(source, dict) else "config.json")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a config.json is a JSON object, got {type(raw).__name__}")
    try:
        arch = family_of(raw, name=where).read_arch(raw, name=where)
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError, ZeroDivisionError) as err:
        raise ConfigError(f"{where}: a value has the wrong type or range ({type(err).__name__}: {err})") from None
    sizes = ("num_layers", "hidden_size", "num_heads", "num_query_groups", "head_dim", "ffn_hidden_size", "vocab_size",
             "vision_layers", "vision_hidden_size", "vision_heads", "vision_ffn_hidden_size", "patch_size",
             "temporal_patch_size", "in_channels", "spatial_merge_size", "out_hidden_size")
    if bad := [n for n in sizes if getattr(arch, n) < 1]:
        raise ConfigError(f"{where}: {', '.join(bad)} must be positive")
    return arch
