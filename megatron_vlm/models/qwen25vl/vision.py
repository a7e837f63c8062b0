"""Qwen2.5-VL vision tower in Megatron-Core modules.

Conv3d patch embedding (14 x 14 pixels x 2 frames), 2-D rotary embedding, a non-causal
``TransformerBlock`` whose layers attend within vision windows (Qwen2.5-VL's window index /
reverse index, ``window_size`` pixels) except the ``fullatt_block_indexes`` layers, which attend
within each image (frame); then the 2 x 2 patch merger (RMSNorm, Linear, GELU, Linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules

from megatron_vlm.models.attention import AttentionSegments
from megatron_vlm.models.qwen25vl.config import Qwen25VisionTransformerConfig
from megatron_vlm.models.vision_tower import (
    PatchEmbed,
    PatchMerger,
    frame_cu_seqlens,
    grids,
    rotary_embedding,
    vision_inv_freq,
)


def window_layout(grid_thw, merge: int, window_size: int, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL's window order of merge units and the window boundaries (in patches).

    Returns ``window_index [n_units]`` (unit ``window_index[i]`` goes to position ``i``) and
    ``cu_window_seqlens``; windows are ``window_size // merge // patch_size`` units square, cut
    from the top-left corner of each frame, empty windows dropped.
    """
    units_per_window = window_size // merge // patch_size
    index, lengths, offset = [], [], 0
    for t, h, w in grids(grid_thw):
        gh, gw = h // merge, w // merge
        ids = torch.arange(t * gh * gw).reshape(t, gh, gw)
        ph, pw = -gh % units_per_window, -gw % units_per_window
        nh, nw = (gh + ph) // units_per_window, (gw + pw) // units_per_window
        padded = F.pad(ids, (0, pw, 0, ph), value=-1)
        padded = padded.reshape(t, nh, units_per_window, nw, units_per_window).permute(0, 1, 3, 2, 4)
        padded = padded.reshape(t, nh * nw, units_per_window * units_per_window)
        lengths.extend((padded >= 0).sum(-1).flatten().tolist())
        flat = padded.flatten()
        index.append(flat[flat >= 0] + offset)
        offset += t * gh * gw
    cu = torch.tensor([0] + [n * merge * merge for n in lengths if n > 0], dtype=torch.int64).cumsum(0)
    return torch.cat(index), cu


class Qwen25VisionModel(MegatronModule):
    """Qwen2.5-VL's vision transformer: ``(pixel_values, grid_thw)`` -> one LLM embedding per 2x2 patches."""

    def __init__(self, config: Qwen25VisionTransformerConfig, spec: TransformerBlockSubmodules, norm: type):
        super().__init__(config=config)
        if config.sequence_parallel or config.context_parallel_size != 1:
            raise ValueError("the vision tower runs without sequence/context parallelism "
                             "(CP splits its work by image instead)")
        self.patch_embed = PatchEmbed(config)
        self.decoder = TransformerBlock(config=config, spec=spec, post_layer_norm=False)
        self.merger = PatchMerger(config, norm)
        self.register_buffer("inv_freq", vision_inv_freq(config), persistent=False)

    def forward(self, pixel_values: torch.Tensor, grid_thw) -> torch.Tensor:
        cfg = self.config
        merge, unit = cfg.spatial_merge_size, cfg.spatial_merge_size ** 2
        device = pixel_values.device
        window_index, cu_window = window_layout(grid_thw, merge, cfg.window_size, cfg.patch_size)
        perm = (window_index[:, None] * unit + torch.arange(unit)).flatten().to(device)
        x = self.patch_embed(pixel_values)[perm]
        rotary = rotary_embedding(grid_thw, merge, self.inv_freq.to(device), perm)
        segments = AttentionSegments(cu_seqlens=frame_cu_seqlens(grid_thw), window_cu_seqlens=cu_window,
                                     full_attention_layers=frozenset(cfg.fullatt_block_indexes))
        x = self.decoder(hidden_states=x[:, None, :], attention_mask=None, rotary_pos_emb=rotary,
                         packed_seq_params=segments)
        return self.merger(x)[torch.argsort(window_index.to(device))]
