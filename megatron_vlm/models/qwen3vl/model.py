"""``Qwen3VLModel``: the native Megatron-Core Qwen3-VL (dense): the shared VLM with Qwen3's language layers
(q/k RMSNorm, DeepStack), interleaved mRoPE and Qwen3-VL's vision tower."""

from __future__ import annotations

import copy

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_vlm.models.config import VLModelConfig
from megatron_vlm.models.deepstack import DeepStackTransformerLayer
from megatron_vlm.models.qwen3vl.vision import Qwen3VisionModel
from megatron_vlm.models.vlm import VisionLanguageModel


def interleaved_axes(mrope_section: list[int], frequencies: int) -> torch.Tensor:
    """Which position axis (0 temporal, 1 height, 2 width) drives each rotary frequency in interleaved mRoPE:
    height at ``1, 4, 7, ...`` below ``3 * section[1]``, width at ``2, 5, 8, ...`` below ``3 * section[2]``,
    temporal everywhere else (transformers' ``Qwen3VLTextRotaryEmbedding``)."""
    axes = torch.zeros(frequencies, dtype=torch.long)
    for axis in (1, 2):
        axes[axis:3 * mrope_section[axis]:3] = axis
    return axes


class InterleavedMultimodalRotaryEmbedding(MultimodalRotaryEmbedding):
    """Megatron-Core's mRoPE module with Qwen3-VL's interleaved frequency layout (same inputs and output:
    position ids ``[3, b, s]`` -> angles ``[s, b, 1, head_dim]``, rotate-half layout)."""

    def forward(self, position_ids: torch.Tensor, mrope_section: list[int], cp_group=None) -> torch.Tensor:
        seq = position_ids.to(device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        freqs = seq[..., None] * self.inv_freq  # [3, b, s, head_dim / 2]
        axes = interleaved_axes(mrope_section, freqs.shape[-1]).to(freqs.device)
        freqs = freqs.gather(0, axes.expand(1, *freqs.shape[1:3], -1))[0]  # [b, s, head_dim / 2]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb[..., None, :].transpose(0, 1).contiguous()


class Qwen3VLModel(VisionLanguageModel):
    """Qwen3-VL: language layers with q/k RMSNorm that add DeepStack features, interleaved mRoPE."""

    def build_vision_model(self, config: VLModelConfig) -> Qwen3VisionModel:
        norm = layer_norm_module(config.transformer_impl)
        block = config.block_spec(config.vision.num_layers, causal=False)
        spec = copy.deepcopy(block.layer_specs[0])
        if config.transformer_impl == "local":  # the local spec's norms are RMSNorm; this tower's are LayerNorm
            spec.submodules.input_layernorm = norm
            spec.submodules.pre_mlp_layernorm = norm
        layers = TransformerBlockSubmodules(layer_specs=[spec] * config.vision.num_layers, layer_norm=norm)
        return Qwen3VisionModel(config.vision, layers, norm)

    def language_block_spec(self, config: VLModelConfig, num_layers: int):
        """The configured GPT layers with q/k RMSNorm, as DeepStack layers (``context`` carries the features)."""
        block = config.block_spec(num_layers, causal=True, qk_layernorm=True)
        if not block.layer_specs:
            return block
        spec = block.layer_specs[0]
        spec = ModuleSpec(module=DeepStackTransformerLayer, submodules=spec.submodules,
                          params={**spec.params, "deepstack_layers": config.deepstack_layers})
        return TransformerBlockSubmodules(layer_specs=[spec] * num_layers, layer_norm=block.layer_norm)

    def rotary_embedding(self, config: VLModelConfig):
        if not config.arch.mrope_interleaved:
            return None
        language = config.language
        return InterleavedMultimodalRotaryEmbedding(kv_channels=language.kv_channels, rotary_percent=1.0,
                                                    rotary_base=config.rotary_base)


def layer_norm_module(transformer_impl: str) -> type:
    """The LayerNorm module of ``transformer_impl`` (the vision tower's norms): megatron-core's torch LayerNorm
    or TE's (both follow the config's ``normalization="LayerNorm"``)."""
    if transformer_impl == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    return WrappedTorchNorm
