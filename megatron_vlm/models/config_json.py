"""Reading a Hugging Face ``config.json`` (of any family) as a dict, with errors that name the file and key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_vlm.errors import ConfigError


def load_hf_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A config dict from a dict, a transformers config, a ``config.json`` path or a checkpoint directory."""
    if isinstance(source, dict):
        return source
    if hasattr(source, "to_dict"):  # a transformers PretrainedConfig
        return source.to_dict()
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no Hugging Face config.json there") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def require(section: dict[str, Any], key: str, where: str, source: str) -> Any:
    if key not in section:
        raise ConfigError(f"{source}: missing '{key}' in {where}")
    return section[key]
