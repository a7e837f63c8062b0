"""Context parallelism over packed streams: the per-sample zig-zag split, gathers, the image split.

A micro-batch is one stream of packed samples (THD), each padded to a multiple of ``2 * cp``
(``cu_seqlens`` are the padded boundaries). Every sample is cut into ``2 * cp`` equal chunks and CP
rank ``r`` holds chunks ``r`` and ``2 * cp - 1 - r`` of every sample, so each rank gets the same
share of every sample's causal attention work. This is Transformer Engine's THD layout
(``thd_get_partitioned_indices``, Megatron-Core's ``get_thd_batch_on_this_cp_rank``): the ``te``
backend receives exactly these tokens, and the ``torch`` backend uses the same split. A stream
without ``cu_seqlens`` is one sample (then the split is Megatron's ``get_batch_on_this_cp_rank``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class CPSplit:
    """This CP rank's tokens of a stream whose (padded) sample boundaries are ``cu_seqlens``."""

    cu_seqlens: tuple[int, ...]
    cp_size: int
    cp_rank: int

    def __post_init__(self):
        lengths = np.diff(self.cu_seqlens)
        bad = np.flatnonzero(lengths % (2 * self.cp_size))
        if self.cu_seqlens[0] != 0 or len(bad):
            where = f"sample {bad[0]} has {lengths[bad[0]]} tokens" if len(bad) else f"starts at {self.cu_seqlens[0]}"
            raise ValueError(f"context parallelism needs every packed sample padded to a multiple of "
                             f"2 * cp = {2 * self.cp_size} tokens starting at 0 (cu_seqlens_padded): {where}")

    @classmethod
    def of(cls, cu_seqlens, cp_size: int, cp_rank: int) -> CPSplit:
        return cls(tuple(int(x) for x in torch.as_tensor(cu_seqlens).tolist()), cp_size, cp_rank)

    @property
    def total(self) -> int:
        return self.cu_seqlens[-1]

    @property
    def local_length(self) -> int:
        return self.total // self.cp_size

    @functools.cached_property
    def chunks(self) -> tuple[tuple[int, int, int], ...]:
        """``(local_start, global_start, length)`` of the rank's chunks, in local (= stream) order."""
        out, local = [], 0
        for start, end in zip(self.cu_seqlens[:-1], self.cu_seqlens[1:]):
            chunk = (end - start) // (2 * self.cp_size)
            if chunk == 0:
                continue
            for k in (self.cp_rank, 2 * self.cp_size - 1 - self.cp_rank):
                out.append((local, start + k * chunk, chunk))
                local += chunk
        return tuple(out)

    @functools.cached_property
    def _indices(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(g, g + n) for _, g, n in self.chunks])

    def indices(self, device=None) -> torch.Tensor:
        """Stream positions of the rank's tokens, in local order (int64)."""
        return torch.from_numpy(self._indices).to(device)

    def rank(self, cp_rank: int) -> CPSplit:
        return CPSplit(self.cu_seqlens, self.cp_size, cp_rank)

    @functools.cached_property
    def _gather_order(self) -> np.ndarray:
        ranks = np.concatenate([self.rank(r)._indices for r in range(self.cp_size)])
        return np.argsort(ranks, kind="stable")

    def gather_order(self, device=None) -> torch.Tensor:
        """Indices putting the ranks' local parts, concatenated in rank order, into stream order."""
        return torch.from_numpy(self._gather_order).to(device)

    def select(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's tokens of a full-stream ``tensor`` along ``dim`` (ids, labels, masks, positions)."""
        if tensor.shape[dim] != self.total:
            raise ValueError(f"a full stream of {self.total} tokens was expected along dim {dim}, got {tensor.shape[dim]}")
        return tensor.index_select(dim, self.indices(tensor.device))


def cp_split(cu_seqlens, length: int, cp_size: int, cp_rank: int) -> CPSplit | None:
    """The :class:`CPSplit` of a stream of ``length`` tokens (``cu_seqlens=None``: one sample); ``None`` without CP."""
    if cp_size == 1:
        return None
    return CPSplit.of(cu_seqlens if cu_seqlens is not None else [0, length], cp_size, cp_rank)


class _AllGatherVarlen(torch.autograd.Function):
    """Concatenate each rank's ``x`` along dim 0 (sizes may differ); backward sums grads, keeps own rows."""

    @staticmethod
    def forward(ctx, x, sizes, group):
        rank = dist.get_rank(group)
        ctx.group, ctx.offset, ctx.size = group, sum(sizes[:rank]), sizes[rank]
        ctx.equal = len(set(sizes)) == 1
        width = max(sizes)
        padded = x
        if not ctx.equal:
            padded = x.new_zeros((width, *x.shape[1:]))
            padded[: x.shape[0]] = x
        if ctx.equal and dist.get_backend(group) == "nccl":
            out = padded.new_empty((width * len(sizes), *x.shape[1:]))
            dist.all_gather_into_tensor(out, padded.contiguous(), group=group)
            return out
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if ctx.equal and dist.get_backend(ctx.group) == "nccl":
            out = grad.new_empty((ctx.size, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, group=ctx.group)
            return out, None, None
        dist.all_reduce(grad, group=ctx.group)  # gloo has no reduce-scatter
        return grad[ctx.offset: ctx.offset + ctx.size], None, None


def all_gather_varlen(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Differentiable all-gather along dim 0 of per-rank tensors with known ``sizes`` (in rank order)."""
    if len(sizes) == 1:
        return x
    return _AllGatherVarlen.apply(x, list(sizes), group)


def gather_sequence_from_cp(x: torch.Tensor, group, split: CPSplit) -> torch.Tensor:
    """The full stream in stream order from each rank's part ``x`` ``[s_local, ...]`` (K/V at their own size)."""
    full = all_gather_varlen(x, [split.local_length] * split.cp_size, group)
    return full.index_select(0, split.gather_order(x.device))


def split_images_by_cost(costs: list[int], parts: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` image ranges for ``parts`` ranks with balanced total cost (patch counts)."""
    total = sum(costs)
    bounds, acc, start = [], 0, 0
    for part in range(parts - 1):
        target = total * (part + 1) / parts
        end = start
        while end < len(costs) and acc + costs[end] / 2 <= target:
            acc += costs[end]
            end += 1
        bounds.append((start, end))
        start = end
    bounds.append((start, len(costs)))
    return bounds
