"""Qwen3-VL vision tower in Megatron-Core modules.

Conv3d patch embedding (16 x 16 pixels x 2 frames, with bias), plus learned position embeddings
(a square ``sqrt(num_position_embeddings)`` grid, bilinearly interpolated with aligned corners to
each image's patch grid), 2-D rotary embedding, a non-causal ``TransformerBlock`` of LayerNorm /
GELU-MLP layers attending within each image (frame; no windows), the 2 x 2 patch merger, and
DeepStack: after each layer in ``deepstack_visual_indexes`` a merger of its own (its LayerNorm over
the 4 concatenated patches) turns the layer's output into features for the first language layers.
"""

from __future__ import annotations

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules

from megatron_vlm.models.attention import AttentionSegments
from megatron_vlm.models.qwen3vl.config import Qwen3VisionTransformerConfig
from megatron_vlm.models.vision_tower import (
    PatchEmbed,
    PatchMerger,
    ShardedModuleList,
    frame_cu_seqlens,
    grids,
    rotary_embedding,
    vision_inv_freq,
)


def _axis_taps(index: torch.Tensor, size: int, side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear (aligned corners) source taps and weight of output positions ``index`` of an axis of ``size``
    resampled from ``side``: ``(floor, ceil, fraction)``."""
    src = index.float() * (side - 1) / max(size - 1, 1)
    floor = src.floor()
    return floor.long(), (floor.long() + 1).clamp(max=side - 1), src - floor


def position_interpolation(grid_thw, side: int, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``[n, 4]`` into the ``side x side`` position table and bilinear weights ``[n, 4]`` of every
    patch, in the merge-block-major patch order (each frame of an image repeats the same positions)."""
    indices, weights = [], []
    for t, h, w in grids(grid_thw):
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        rows, cols = (a.reshape(shape).transpose(1, 2).flatten() for a in (rows, cols))
        r0, r1, dr = _axis_taps(rows, h, side)
        c0, c1, dc = _axis_taps(cols, w, side)
        idx = torch.stack([r0 * side + c0, r0 * side + c1, r1 * side + c0, r1 * side + c1], dim=-1)
        wts = torch.stack([(1 - dr) * (1 - dc), (1 - dr) * dc, dr * (1 - dc), dr * dc], dim=-1)
        indices.append(idx.repeat(t, 1))
        weights.append(wts.repeat(t, 1))
    return torch.cat(indices), torch.cat(weights)


class Qwen3VisionModel(MegatronModule):
    """Qwen3-VL's vision transformer: ``(pixel_values, grid_thw)`` -> per LLM token (2x2 patches) the merged
    embedding and one DeepStack feature per tap, concatenated: ``[tokens, out_hidden * (1 + taps)]``."""

    def __init__(self, config: Qwen3VisionTransformerConfig, spec: TransformerBlockSubmodules, norm: type):
        super().__init__(config=config)
        if config.sequence_parallel or config.context_parallel_size != 1:
            raise ValueError("the vision tower runs without sequence/context parallelism "
                             "(CP splits its work by image instead)")
        self.patch_embed = PatchEmbed(config, bias=True)
        self.pos_embed = torch.nn.Embedding(config.num_position_embeddings, config.hidden_size,
                                            dtype=config.params_dtype)
        self.side = int(config.num_position_embeddings ** 0.5)
        self.decoder = TransformerBlock(config=config, spec=spec, post_layer_norm=False)
        self.merger = PatchMerger(config, norm)
        self.deepstack_mergers = ShardedModuleList(
            [PatchMerger(config, norm, postshuffle=True) for _ in config.deepstack_visual_indexes])
        self.register_buffer("inv_freq", vision_inv_freq(config), persistent=False)

    def positions(self, grid_thw, device) -> torch.Tensor:
        """The interpolated learned position embedding of every patch ``[n, hidden]``."""
        index, weight = position_interpolation(grid_thw, self.side, self.config.spatial_merge_size)
        return (self.pos_embed(index.to(device)) * weight.to(device)[..., None]).sum(1)

    def _layer(self, layer, x, rotary, segments):
        """One vision layer, recomputed in backward under ``recompute_granularity='full'`` (as the block would)."""
        def run(hidden):
            return layer(hidden_states=hidden, attention_mask=None, rotary_pos_emb=rotary,
                         packed_seq_params=segments)[0]

        if self.config.recompute_granularity == "full" and self.training:
            return tensor_parallel.checkpoint(run, False, x)
        return run(x)

    def forward(self, pixel_values: torch.Tensor, grid_thw) -> torch.Tensor:
        device = pixel_values.device
        x = self.patch_embed(pixel_values)
        x = x + self.positions(grid_thw, device).to(x.dtype)
        rotary = rotary_embedding(grid_thw, self.config.spatial_merge_size, self.inv_freq.to(device))
        segments = AttentionSegments(cu_seqlens=frame_cu_seqlens(grid_thw))
        taps = {layer: k for k, layer in enumerate(self.config.deepstack_visual_indexes)}
        x = x[:, None, :]
        features = [None] * len(taps)
        for i, layer in enumerate(self.decoder.layers):  # the block's layers, with taps between them
            x = self._layer(layer, x, rotary, segments)
            if i in taps:
                features[taps[i]] = self.deepstack_mergers[taps[i]](x)
        return torch.cat([self.merger(x), *features], dim=-1)
