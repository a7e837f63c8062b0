"""Parts every family's vision tower is built from: patch embedding, 2-D rotary positions, frame segments, merger.

Patches arrive in the merge-block-major order of ``megatron_vlm.models.geometry`` (each 2 x 2 group
contiguous); positions and segments here follow that order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.utils import sharded_state_dict_default

from megatron_vlm.models.config import VisionTransformerConfig


def grids(grid_thw) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in row) for row in torch.as_tensor(grid_thw).reshape(-1, 3).tolist()]


def frame_cu_seqlens(grid_thw) -> torch.Tensor:
    """Boundaries of the full-attention segments: one per frame of every image, in patches."""
    lengths = [h * w for t, h, w in grids(grid_thw) for _ in range(t)]
    return F.pad(torch.tensor(lengths, dtype=torch.int64).cumsum(0), (1, 0))


def rotary_positions(grid_thw, merge: int) -> torch.Tensor:
    """``[n_patches, 2]`` (row, column) of every patch, in the merge-block-major patch order."""
    out = []
    for t, h, w in grids(grid_thw):
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        hh = hh.reshape(shape).transpose(1, 2).flatten()
        ww = ww.reshape(shape).transpose(1, 2).flatten()
        out.append(torch.stack([hh, ww], dim=-1).repeat(t, 1))
    return torch.cat(out)


class PatchEmbed(torch.nn.Module):
    """``pixel_values [n, C * T * P * P]`` -> ``[n, hidden]`` with a stride-equals-kernel Conv3d."""

    def __init__(self, config: VisionTransformerConfig, bias: bool = False):
        super().__init__()
        self.shape = (config.in_channels, config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = torch.nn.Conv3d(config.in_channels, config.hidden_size, kernel_size=self.shape[1:],
                                    stride=self.shape[1:], bias=bias, dtype=config.params_dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(self.proj.weight.dtype).view(-1, *self.shape)
        return self.proj(x).view(x.shape[0], -1)


class PatchMerger(MegatronModule):
    """A norm, then each 2 x 2 block of patches -> one LLM token (column- then row-parallel MLP).

    ``postshuffle``: the norm runs over the 4 concatenated patches (Qwen3-VL's DeepStack mergers)
    instead of each patch.
    """

    def __init__(self, config: VisionTransformerConfig, norm: type, postshuffle: bool = False):
        super().__init__(config=config)
        width = config.hidden_size * config.spatial_merge_size ** 2
        self.postshuffle = postshuffle
        self.layer_norm = build_module(norm, config=config, hidden_size=width if postshuffle else config.hidden_size,
                                       eps=1e-6)
        self.linear_fc1 = tensor_parallel.ColumnParallelLinear(
            width, width, config=config, init_method=config.init_method, bias=True, gather_output=False)
        self.linear_fc2 = tensor_parallel.RowParallelLinear(
            width, config.out_hidden_size, config=config, init_method=config.output_layer_init_method,
            bias=True, input_is_parallel=True, skip_bias_add=False)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, 1, hidden]`` -> ``[n / merge^2, out_hidden]``."""
        if self.postshuffle:
            x = self.layer_norm(x.reshape(-1, 1, self.width))
        else:
            x = self.layer_norm(x).reshape(-1, 1, self.width)
        x, _ = self.linear_fc1(x)
        x, _ = self.linear_fc2(F.gelu(x))
        return x[:, 0]


class ShardedModuleList(torch.nn.ModuleList):
    """A ``ModuleList`` whose sharded state dict is its members' (so their tensor-parallel splits are kept:
    megatron-core saves any other child as replicated)."""

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        out = {}
        for i, module in enumerate(self):
            out.update(sharded_state_dict_default(module, f"{prefix}{i}.", sharded_offsets, metadata))
        return out


def rotary_embedding(grid_thw, merge: int, inv_freq: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """The 2-D rotary angles ``[n, 1, 1, head_dim]`` of every patch (row angles, then column angles, each over
    ``head_dim / 4`` frequencies, doubled for rotate-half), in patch order or permuted by ``order``."""
    pos = rotary_positions(grid_thw, merge).to(inv_freq.device)
    if order is not None:
        pos = pos[order]
    freqs = (pos[..., None].float() * inv_freq).reshape(pos.shape[0], -1)
    return torch.cat([freqs, freqs], dim=-1)[:, None, None, :]


def vision_inv_freq(config: VisionTransformerConfig) -> torch.Tensor:
    """Inverse frequencies of the 2-D rotary embedding (``head_dim / 4`` of them, base ``vision_rope_theta``)."""
    half = config.kv_channels // 2
    return 1.0 / (config.vision_rope_theta ** (torch.arange(0, half, 2, dtype=torch.float) / half))
