"""Qwen2.5-VL vision tower in Megatron-Core modules.

Conv3d patch embedding (14 x 14 pixels x 2 frames), 2-D rotary embedding, a non-causal
``TransformerBlock`` whose layers attend within vision windows (Qwen2.5-VL's window index /
reverse index, ``window_size`` pixels) except the ``fullatt_block_indexes`` layers, which attend
within each image (frame); then the 2 x 2 patch merger (RMSNorm, Linear, GELU, Linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules

from megatron_vlm.models.attention import AttentionSegments
from megatron_vlm.models.qwen25vl.config import Qwen25VisionTransformerConfig


def _grids(grid_thw) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in row) for row in torch.as_tensor(grid_thw).reshape(-1, 3).tolist()]


def frame_cu_seqlens(grid_thw) -> torch.Tensor:
    """Boundaries of the full-attention segments: one per frame of every image, in patches."""
    lengths = [h * w for t, h, w in _grids(grid_thw) for _ in range(t)]
    return F.pad(torch.tensor(lengths, dtype=torch.int64).cumsum(0), (1, 0))


def rotary_positions(grid_thw, merge: int) -> torch.Tensor:
    """``[n_patches, 2]`` (row, column) of every patch, in the merge-block-major patch order."""
    out = []
    for t, h, w in _grids(grid_thw):
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        hh = hh.reshape(shape).transpose(1, 2).flatten()
        ww = ww.reshape(shape).transpose(1, 2).flatten()
        out.append(torch.stack([hh, ww], dim=-1).repeat(t, 1))
    return torch.cat(out)


def window_layout(grid_thw, merge: int, window_size: int, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL's window order of merge units and the window boundaries (in patches).

    Returns ``window_index [n_units]`` (unit ``window_index[i]`` goes to position ``i``) and
    ``cu_window_seqlens``; windows are ``window_size // merge // patch_size`` units square, cut
    from the top-left corner of each frame, empty windows dropped.
    """
    units_per_window = window_size // merge // patch_size
    index, lengths, offset = [], [], 0
    for t, h, w in _grids(grid_thw):
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


class PatchEmbed(torch.nn.Module):
    """``pixel_values [n, C * T * P * P]`` -> ``[n, hidden]`` with a stride-equals-kernel Conv3d."""

    def __init__(self, config: Qwen25VisionTransformerConfig):
        super().__init__()
        self.shape = (config.in_channels, config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = torch.nn.Conv3d(config.in_channels, config.hidden_size, kernel_size=self.shape[1:],
                                    stride=self.shape[1:], bias=False, dtype=config.params_dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(self.proj.weight.dtype).view(-1, *self.shape)
        return self.proj(x).view(x.shape[0], -1)


class PatchMerger(MegatronModule):
    """RMSNorm, then each 2 x 2 block of patches -> one LLM token (column- then row-parallel MLP)."""

    def __init__(self, config: Qwen25VisionTransformerConfig, norm: type):
        super().__init__(config=config)
        width = config.hidden_size * config.spatial_merge_size ** 2
        self.layer_norm = build_module(norm, config=config, hidden_size=config.hidden_size, eps=1e-6)
        self.linear_fc1 = tensor_parallel.ColumnParallelLinear(
            width, width, config=config, init_method=config.init_method, bias=True, gather_output=False)
        self.linear_fc2 = tensor_parallel.RowParallelLinear(
            width, config.out_hidden_size, config=config, init_method=config.output_layer_init_method,
            bias=True, input_is_parallel=True, skip_bias_add=False)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, 1, hidden]`` -> ``[n / merge^2, out_hidden]``."""
        x = self.layer_norm(x).reshape(-1, 1, self.width)
        x, _ = self.linear_fc1(x)
        x, _ = self.linear_fc2(F.gelu(x))
        return x[:, 0]


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
        half = config.kv_channels // 2
        inv_freq = 1.0 / (config.vision_rope_theta ** (torch.arange(0, half, 2, dtype=torch.float) / half))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, pixel_values: torch.Tensor, grid_thw) -> torch.Tensor:
        cfg = self.config
        merge, unit = cfg.spatial_merge_size, cfg.spatial_merge_size ** 2
        device = pixel_values.device
        window_index, cu_window = window_layout(grid_thw, merge, cfg.window_size, cfg.patch_size)
        perm = (window_index[:, None] * unit + torch.arange(unit)).flatten().to(device)
        x = self.patch_embed(pixel_values)[perm]
        pos = rotary_positions(grid_thw, merge).to(device)[perm]
        freqs = (pos[..., None].float() * self.inv_freq.to(device)).reshape(pos.shape[0], -1)
        rotary = torch.cat([freqs, freqs], dim=-1)[:, None, None, :]
        segments = AttentionSegments(cu_seqlens=frame_cu_seqlens(grid_thw), window_cu_seqlens=cu_window,
                                     full_attention_layers=frozenset(cfg.fullatt_block_indexes))
        x = self.decoder(hidden_states=x[:, None, :], attention_mask=None, rotary_pos_emb=rotary,
                         packed_seq_params=segments)
        return self.merger(x)[torch.argsort(window_index.to(device))]
