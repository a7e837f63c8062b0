"""Context-parallel helpers: the load-balanced sequence layout, a differentiable all-gather, image split.

A sequence of length ``S`` is cut into ``2 * cp`` equal chunks; CP rank ``r`` holds chunks ``r`` and
``2 * cp - 1 - r``, so every rank gets the same share of causal-attention work (Megatron's layout).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def cp_token_indices(seq_len: int, cp_size: int, cp_rank: int, device=None) -> torch.Tensor:
    """Global positions (sorted) of the tokens CP rank ``cp_rank`` holds."""
    if seq_len % (2 * cp_size):
        raise ValueError(f"sequence length {seq_len} must be divisible by 2 * context_parallel_size = {2 * cp_size}")
    chunk = seq_len // (2 * cp_size)
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk, device=device)
    second = torch.arange((2 * cp_size - 1 - cp_rank) * chunk, (2 * cp_size - cp_rank) * chunk, device=device)
    return torch.cat([first, second])


def cp_chunks(seq_len: int, cp_size: int, cp_rank: int) -> list[tuple[int, int, int]]:
    """The rank's chunks as ``(local_start, global_start, length)``."""
    chunk = seq_len // (2 * cp_size)
    return [(0, cp_rank * chunk, chunk), (chunk, (2 * cp_size - 1 - cp_rank) * chunk, chunk)]


def cp_slice(tensor: torch.Tensor, dim: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """This rank's part of a full-length ``tensor`` along ``dim`` (labels, loss masks, position ids)."""
    if cp_size == 1:
        return tensor
    idx = cp_token_indices(tensor.shape[dim], cp_size, cp_rank, device=tensor.device)
    return tensor.index_select(dim, idx)


class _AllGatherVarlen(torch.autograd.Function):
    """Concatenate each rank's ``x`` along dim 0 (sizes may differ); backward sums grads, keeps own rows."""

    @staticmethod
    def forward(ctx, x, sizes, group):
        rank = dist.get_rank(group)
        ctx.group, ctx.offset, ctx.size = group, sum(sizes[:rank]), sizes[rank]
        ctx.equal = len(set(sizes)) == 1
        width = max(sizes)
        padded = x.new_zeros((width, *x.shape[1:]))
        padded[: x.shape[0]] = x
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


def gather_sequence_from_cp(x: torch.Tensor, group) -> torch.Tensor:
    """Full sequence in global order from each rank's load-balanced part; ``x`` is ``[s_local, ...]``."""
    cp_size = dist.get_world_size(group)
    s_local = x.shape[0]
    full = all_gather_varlen(x, [s_local] * cp_size, group)  # rank-major: r's chunk r, then chunk 2cp-1-r
    order = torch.cat([cp_token_indices(s_local * cp_size, cp_size, r, device=x.device) for r in range(cp_size)])
    return full[torch.argsort(order)]


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
