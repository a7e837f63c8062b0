"""The ``torch`` attention backend: a core-attention module on ``scaled_dot_product_attention``.

It is the ``core_attention`` submodule of Megatron-Core's ``SelfAttention`` (same call signature
as ``DotProductAttention``). Masks are never materialized as ``s x s``: attention runs per
segment (a packed sample, an image, a vision window), with segments of equal length batched into
one SDPA call. With context parallelism K/V are all-gathered over the CP group (cheap with GQA)
and each local query chunk attends to its segment's keys up to its own position.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from torch.nn.attention.bias import causal_lower_right

from megatron_vlm.models.context_parallel import cp_chunks, gather_sequence_from_cp


@dataclass
class AttentionSegments:
    """Which tokens attend to which: passed as ``attention_mask`` through Megatron-Core's blocks.

    ``cu_seqlens`` are boundaries over the batch flattened row-major (``b * s`` tokens, full
    sequence length when context parallel); a segment never crosses a row. Layers whose 0-based
    index is in ``full_attention_layers`` use ``cu_seqlens``; the others use ``window_cu_seqlens``
    when given (Qwen2.5-VL's vision windows).
    """

    cu_seqlens: torch.Tensor
    window_cu_seqlens: torch.Tensor | None = None
    full_attention_layers: frozenset[int] = field(default_factory=frozenset)

    def for_layer(self, layer_number: int) -> torch.Tensor:
        """Boundaries used by Megatron layer ``layer_number`` (1-based)."""
        if self.window_cu_seqlens is None or (layer_number - 1) in self.full_attention_layers:
            return self.cu_seqlens
        return self.window_cu_seqlens


def _pieces(cu: list[int], seq_len: int, batch: int, chunks: list[tuple[int, int, int]], causal: bool):
    """Attention work items ``(q_flat_start, k_flat_start, q_len, k_len)`` grouped by shape.

    Query indices are local (this rank's tokens), key indices global; ``chunks`` lists this rank's
    ``(local_start, global_start, length)`` pieces of every row.
    """
    s_local = sum(c[2] for c in chunks)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for a, e in zip(cu[:-1], cu[1:]):
        row = a // seq_len
        if e <= a:
            continue
        if (e - 1) // seq_len != row:
            raise ValueError(f"attention segment [{a}, {e}) crosses a batch row boundary (row length {seq_len})")
        a_g, e_g = a - row * seq_len, e - row * seq_len
        for local_start, global_start, length in chunks:
            qa, qe = max(a_g, global_start), min(e_g, global_start + length)
            if qa >= qe:
                continue
            k_end = qe if causal else e_g
            q_flat = row * s_local + local_start + (qa - global_start)
            groups[(qe - qa, k_end - a_g)].append((q_flat, row * seq_len + a_g))
    return groups


def segmented_attention(q, k, v, cu_seqlens: list[int] | None, *, causal: bool, chunks=None,
                        dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Attention of ``q [b, h, s_q, d]`` over ``k, v [b, h, s_k, d]`` within segments; returns ``q``'s shape.

    ``cu_seqlens`` are over the flattened ``b * s_k`` keys (``None``: one segment per row);
    ``chunks`` map local queries to global positions (context parallel), default: identity.
    """
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    if cu_seqlens is None and chunks is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p, scale=scale)
    if cu_seqlens is None:
        cu_seqlens = [i * s_k for i in range(b + 1)]
    if chunks is None:
        chunks = [(0, 0, s_q)]
    if cu_seqlens[0] != 0 or cu_seqlens[-1] != b * s_k:
        raise ValueError(f"cu_seqlens must span 0..{b * s_k} (batch {b} x seq {s_k}), got {cu_seqlens[0]}..{cu_seqlens[-1]}")
    qf = q.transpose(0, 1).reshape(h, b * s_q, d)
    kf = k.transpose(0, 1).reshape(h, b * s_k, d)
    vf = v.transpose(0, 1).reshape(h, b * s_k, d)
    outs, order = [], []
    for (q_len, k_len), starts in _pieces(cu_seqlens, s_k, b, chunks, causal).items():
        qs = torch.tensor([s[0] for s in starts], device=q.device)
        ks = torch.tensor([s[1] for s in starts], device=q.device)
        q_idx = qs[:, None] + torch.arange(q_len, device=q.device)
        k_idx = ks[:, None] + torch.arange(k_len, device=q.device)
        qq = qf[:, q_idx].transpose(0, 1)  # [n, h, q_len, d]
        kk, vv = kf[:, k_idx].transpose(0, 1), vf[:, k_idx].transpose(0, 1)
        if not causal:
            mask, is_causal = None, False
        elif q_len == k_len:
            mask, is_causal = None, True
        else:
            mask, is_causal = causal_lower_right(q_len, k_len), False
        o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=dropout_p, scale=scale)
        outs.append(o.transpose(0, 1).reshape(h, -1, d))
        order.append(q_idx.reshape(-1))
    order = torch.cat(order)
    if order.numel() != b * s_q:
        raise ValueError(f"attention segments cover {order.numel()} of {b * s_q} query tokens")
    out = torch.cat(outs, dim=1)[:, torch.argsort(order)]
    return out.reshape(h, b, s_q, d).transpose(0, 1)


class TorchDotProductAttention(MegatronModule):
    """Drop-in ``core_attention`` for Megatron-Core's ``SelfAttention`` built on torch SDPA."""

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection: ProcessGroupCollection | None = None):
        super().__init__(config=config)
        self.layer_number = max(1, layer_number)
        self.causal = attn_mask_type == AttnMaskType.causal
        self.softmax_scale = softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
        self.cp_group = pg_collection.cp if config.context_parallel_size > 1 else None

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        """``query [sq, b, np, hn]``, ``key/value [sk, b, ng, hn]`` -> ``[sq, b, np * hn]``."""
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("the torch attention backend takes segments through attention_mask "
                             "(AttentionSegments), not attention_bias / packed_seq_params")
        if attention_mask is not None and not isinstance(attention_mask, AttentionSegments):
            raise TypeError(f"attention_mask must be AttentionSegments or None, got {type(attention_mask).__name__}")
        sq, b, nh, hd = query.shape
        chunks = None
        if self.cp_group is not None:
            cp_size, cp_rank = self.cp_group.size(), self.cp_group.rank()
            key = gather_sequence_from_cp(key, self.cp_group)
            value = gather_sequence_from_cp(value, self.cp_group)
            chunks = cp_chunks(key.shape[0], cp_size, cp_rank)
        groups = key.shape[2]
        if nh != groups:
            key = key.repeat_interleave(nh // groups, dim=2)
            value = value.repeat_interleave(nh // groups, dim=2)
        cu = None
        if attention_mask is not None:
            cu = [int(x) for x in attention_mask.for_layer(self.layer_number).tolist()]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        out = segmented_attention(q, k, v, cu, causal=self.causal, chunks=chunks,
                                  dropout_p=self.dropout if self.training else 0.0, scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(sq, b, nh * hd)
