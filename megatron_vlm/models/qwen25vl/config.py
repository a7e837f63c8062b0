"""Qwen2.5-VL's Megatron config: QKV bias in the language model, a windowed SwiGLU vision tower."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_vlm.models.config import (
    VisionTransformerConfig,
    VLModelConfig,
    build_model_config,
    vision_kwargs,
)
from megatron_vlm.models.qwen25vl.arch import Qwen25VLArch


@dataclass
class Qwen25VisionTransformerConfig(VisionTransformerConfig):
    """The vision tower's config plus its windows: layers in ``fullatt_block_indexes`` attend to the whole
    frame, the others within ``window_size``-pixel windows."""

    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = ()


def qwen25vl_config_from_hf(source: str | Path | dict[str, Any] | Qwen25VLArch, **kwargs: Any) -> VLModelConfig:
    """The Megatron configs of Qwen2.5-VL from its Hugging Face config (dict, file, checkpoint dir or arch);
    ``kwargs`` are :func:`megatron_vlm.models.config.build_model_config`'s (layout, attention_backend,
    params_dtype, rope, recompute, extra language ``TransformerConfig`` fields)."""
    arch = source if isinstance(source, Qwen25VLArch) else Qwen25VLArch.from_hf(source)

    def vision(common: dict[str, Any]) -> Qwen25VisionTransformerConfig:
        return Qwen25VisionTransformerConfig(**vision_kwargs(arch, common), window_size=arch.window_size,
                                             fullatt_block_indexes=arch.fullatt_block_indexes)

    return build_model_config(arch, vision, dict(add_qkv_bias=True), **kwargs)
