"""Reading a Hugging Face ``config.json`` (of any family) as a dict, with errors that name the file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_vlm.errors import ConfigError
from megatron_vlm.utils.jsonl import read_json


def load_hf_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A config dict from a dict, a transformers config, a ``config.json`` path or a checkpoint directory."""
    if isinstance(source, dict):
        return source
    if hasattr(source, "to_dict"):  # a transformers PretrainedConfig
        return source.to_dict()
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no Hugging Face config.json there")
    return read_json(path, ConfigError)


def require(section: dict[str, Any], key: str, where: str, source: str) -> Any:
    if key not in section:
        raise ConfigError(f"{source}: missing '{key}' in {where}")
    return section[key]
