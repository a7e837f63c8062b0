"""Qwen3-VL's Megatron config: q/k RMSNorm and no QKV bias in the language model; a LayerNorm, GELU-MLP
vision tower with learned positions and DeepStack taps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_vlm.errors import ConfigError
from megatron_vlm.models.config import (
    VisionTransformerConfig,
    VLModelConfig,
    build_model_config,
    vision_kwargs,
)
from megatron_vlm.models.qwen3vl.arch import Qwen3VLArch


@dataclass
class Qwen3VisionTransformerConfig(VisionTransformerConfig):
    """The vision tower's config plus its learned position grid and DeepStack taps."""

    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = ()


def qwen3vl_config_from_hf(source: str | Path | dict[str, Any] | Qwen3VLArch, **kwargs: Any) -> VLModelConfig:
    """The Megatron configs of Qwen3-VL from its Hugging Face config (dict, file, checkpoint dir or arch);
    ``kwargs`` are :func:`megatron_vlm.models.config.build_model_config`'s."""
    arch = source if isinstance(source, Qwen3VLArch) else Qwen3VLArch.from_hf(source)
    layout = kwargs.get("layout")
    if layout is not None and layout.vpp and arch.deepstack_layers > arch.num_layers // (layout.pp * layout.vpp):
        raise ConfigError(f"parallel.vpp={layout.vpp}: the interleaved schedule passes fixed-shape activations, so all "
                          f"{arch.deepstack_layers} DeepStack layers must sit in the first virtual stage "
                          f"({arch.num_layers // (layout.pp * layout.vpp)} layers); use fewer virtual stages or "
                          "parallel.vpp=null")

    def vision(common: dict[str, Any]) -> Qwen3VisionTransformerConfig:
        return Qwen3VisionTransformerConfig(
            # GELU (tanh) MLP: Megatron fuses only gelu and SwiGLU with their bias
            **{**vision_kwargs(arch, common), "normalization": "LayerNorm", "gated_linear_unit": False,
               "bias_activation_fusion": False},
            num_position_embeddings=arch.num_position_embeddings,
            deepstack_visual_indexes=arch.deepstack_visual_indexes)

    return build_model_config(arch, vision, dict(add_qkv_bias=False, qk_layernorm=True), **kwargs)
