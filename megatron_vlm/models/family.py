"""``ModelFamily``: everything that differs between model families, in one record per family.

A family is a folder ``megatron_vlm/models/<family>/`` whose ``__init__.py`` defines ``FAMILY``;
``megatron_vlm.models.registry`` finds it by the Hugging Face ``model_type`` of a ``config.json``
(in the spirit of Megatron-Bridge's ``register_bridge`` and torchtitan's ``ModelSpec``). Stages ask
the family for what they need (shapes, geometry, token ids, the chat template, the Megatron model,
the conversion table, tiny test configs) instead of importing a model's constants. The light parts
(config reader, geometry, chat format) are plain fields; the Megatron parts are named as
``"module:attribute"`` and imported when first used, so the preprocessing stages never import
Megatron-Core for them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from megatron_vlm.models.geometry import ImageGeometry


@dataclass(frozen=True)
class SpecialTokens:
    """The token ids a family's tokenizer and ``config.json`` share (checked against both)."""

    pad: int          # <|endoftext|>: padding, and the label where there is nothing to predict
    im_start: int     # <|im_start|>
    im_end: int       # <|im_end|>: ends every turn; the last loss target of an answer
    vision_start: int  # <|vision_start|>
    vision_end: int    # <|vision_end|>
    image_pad: int     # <|image_pad|>: one per LLM token of an image
    video_pad: int     # <|video_pad|>


@dataclass(frozen=True)
class ChatFormat:
    """A family's tokenizer as the offline tokenizer writes it (``megatron_vlm.tokenizer``)."""

    tokens: SpecialTokens
    template: str               # the Jinja chat template of the model's own tokenizer
    last_token_id: int          # the highest id of its vocabulary (added tokens included)
    model_max_length: int       # its tokenizer_config.json's model_max_length


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ModelFamily:
    """One model family (see the module docstring). ``hf_class`` is the ``transformers`` class that loads
    its checkpoints (verification, export checks); the ``"module:attribute"`` fields name its Megatron parts."""

    model_type: str            # config.json's model_type: the registry key
    name: str                  # for messages and docs: "Qwen3-VL"
    hf_class: str              # e.g. "Qwen3VLForConditionalGeneration"
    arch: type                 # config.json reader: arch.from_hf(source, name=...) -> shapes
    geometry: ImageGeometry
    chat: ChatFormat
    config_builder: str        # (arch | config.json, layout=..., ...) -> the model config
    model: str                 # the Megatron model class
    mapping: str               # the HF <-> Megatron rule table (tuple of mapping.Part)
    tiny: str                  # (**overrides) -> a tiny transformers config (tests, demo)
    preset_configs: str        # {name: hub config.json} of its sizes (``longvlm tune --model`` presets)
    tiny_recipe: str           # the built-in CPU training recipe of its tiny model (``longvlm demo``)
    # in-memory transformers name prefix -> the prefix save_pretrained writes on disk (Qwen2.5-VL's legacy layout)
    hf_disk_prefixes: tuple[tuple[str, str], ...] = ()

    @property
    def tokens(self) -> SpecialTokens:
        return self.chat.tokens

    def read_arch(self, source: str | Path | dict[str, Any], *, name: str | None = None):
        """The shapes of a ``config.json`` of this family."""
        return self.arch.from_hf(source, name=name)

    def config_from_hf(self, source, **kwargs):
        """The Megatron model config (see the family's ``config.py``)."""
        return _load(self.config_builder)(source, **kwargs)

    @cached_property
    def model_class(self) -> type:
        return _load(self.model)

    @cached_property
    def mapping_parts(self) -> tuple:
        return _load(self.mapping)

    @cached_property
    def presets(self) -> dict[str, dict]:
        return _load(self.preset_configs)

    def tiny_config(self, **overrides):
        """A tiny random-weight ``transformers`` config of this family (every structural feature kept)."""
        return _load(self.tiny)(**overrides)

    def hf_model_class(self) -> type:
        import transformers

        return getattr(transformers, self.hf_class)

    def hf_disk_name(self, name: str) -> str:
        """The on-disk (safetensors) name of a ``transformers`` parameter name."""
        for memory, disk in self.hf_disk_prefixes:
            if name.startswith(memory):
                return disk + name[len(memory):]
        return name

    def save_tiny_checkpoint(self, out_dir: str | Path, *, seed: int = 0, dtype: str = "float32",
                             max_shard_size: str | None = None, **overrides: Any) -> Path:
        """Write a random tiny checkpoint of this family to ``out_dir`` (no download) and return its path."""
        import torch

        config = self.tiny_config(**overrides)
        torch.manual_seed(seed)
        model = self.hf_model_class()(config).to(getattr(torch, dtype)).eval()
        out_dir = Path(out_dir)
        model.save_pretrained(out_dir, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
        return out_dir
