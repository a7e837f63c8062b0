"""The ``torch`` attention backend: a core-attention module on ``scaled_dot_product_attention``.

It is the ``core_attention`` submodule of Megatron-Core's ``SelfAttention`` (same call signature
as ``DotProductAttention``); the segment layout arrives as ``packed_seq_params``. Masks are never
materialized as ``s x s``: attention runs per segment (a packed sample, an image, a vision
window), with runs of consecutive equal-length segments batched into one SDPA call as views (no
gather). Grouped-query attention runs on the grouped K/V (SDPA's ``enable_gqa``: no repeated
heads). With context parallelism the K/V of the stream are all-gathered over the CP group at their
grouped size and each local query chunk (the per-sample zig-zag split of
:mod:`megatron_vlm.models.context_parallel`) attends to its sample's keys up to its own position.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from torch.nn.attention.bias import causal_lower_right

from megatron_vlm.models.context_parallel import CPSplit, gather_sequence_from_cp


@dataclass
class AttentionSegments(PackedSeqParams):
    """Which tokens attend to which; passed as ``packed_seq_params`` through Megatron-Core's blocks.

    ``cu_seqlens`` are segment boundaries over the batch flattened row-major (``b * s`` tokens, the
    full stream when context parallel): packed samples each with its padding (Megatron's
    ``cu_seqlens_padded``), images, windows; a segment never crosses a row. ``seqlens``: the real
    (unpadded) length of each segment, its padding at its end (``None``: no padding). Layers whose
    0-based index is in ``full_attention_layers`` use ``cu_seqlens``; the others use
    ``window_cu_seqlens`` when given (Qwen2.5-VL's vision windows). ``cp``: this rank's part of the
    stream under context parallelism. Plans are computed once and reused by every layer. The
    tensors stay in ``sbhd`` layout (``qkv_format``), so megatron-core treats the attention as
    unpacked; the route (rather than ``attention_mask``) survives activation recomputation.
    """

    cu_seqlens: torch.Tensor | None = None
    seqlens: torch.Tensor | None = None
    window_cu_seqlens: torch.Tensor | None = None
    full_attention_layers: frozenset[int] = field(default_factory=frozenset)
    cp: CPSplit | None = None
    qkv_format: str = "sbhd"
    _plans: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.cu_seqlens is None:
            raise ValueError("AttentionSegments needs cu_seqlens")

    def for_layer(self, layer_number: int) -> torch.Tensor:
        """Boundaries used by Megatron layer ``layer_number`` (1-based)."""
        if self.window_cu_seqlens is None or (layer_number - 1) in self.full_attention_layers:
            return self.cu_seqlens
        return self.window_cu_seqlens

    def plan(self, layer_number: int, batch: int, s_q: int, s_k: int, causal: bool) -> AttentionPlan:
        """The cached :func:`attention_plan` of layer ``layer_number``."""
        cu = self.for_layer(layer_number)
        key = (id(cu), batch, s_q, s_k, causal)
        if key not in self._plans:
            self._plans[key] = attention_plan([int(x) for x in cu.tolist()], batch, s_q, s_k,
                                              self.cp.chunks if self.cp else None, causal)
        return self._plans[key]

    def thd(self, layer_number: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Transformer Engine's THD description of layer ``layer_number``'s segments (host int32 tensors):
        ``cu_seqlens`` of the real lengths, ``cu_seqlens_padded`` (positions in the stream), the longest segment."""
        cu = self.for_layer(layer_number)
        padded = cu.to(torch.int32)
        real = padded
        if self.seqlens is not None and cu is self.cu_seqlens:  # windows and frames carry no padding
            real = F.pad(self.seqlens.to(torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
        return real, padded, int((padded[1:] - padded[:-1]).max())


@dataclass
class AttentionPlan:
    """Runs of ``n`` consecutive equal-shape segments, in query order.

    Each run is ``(q_start, k_start, n, q_len, k_len, lower_right)`` over the flattened
    ``batch * s`` tokens: queries ``[q_start, q_start + n * q_len)`` and keys
    ``[k_start, k_start + n * k_len)`` viewed as ``n`` segments (views, no gather).
    ``lower_right``: causal with the last query aligned to the last key (a CP chunk that starts
    inside its segment). The runs' queries tile the flattened queries in order; ``keys_tile`` says
    whether their keys tile the keys too (always, except under context parallelism), so both can be
    cut with one ``torch.split`` each, whose backward is one concatenation (slicing each run would
    zero-fill a full-size gradient per run: quadratic in the number of vision windows).
    """

    runs: list[tuple[int, int, int, int, int, bool]]
    causal: bool

    @property
    def keys_tile(self) -> bool:
        end = 0
        for _, k0, n, _, k_len, _ in self.runs:
            if k0 != end:
                return False
            end = k0 + n * k_len
        return True


def attention_plan(cu: list[int], batch: int, s_q: int, s_k: int, chunks, causal: bool) -> AttentionPlan:
    """Cut ``batch`` rows into segments (``cu`` over the flattened ``batch * s_k`` keys) and group them.

    Query indices are local; ``chunks`` lists this rank's ``(local_start, global_start, length)``
    pieces of the (one-row) stream under context parallelism (default: every query is local). With
    ``causal`` each query chunk sees its segment's keys up to its own last position.
    """
    if cu[0] != 0 or cu[-1] != batch * s_k:
        raise ValueError(f"cu_seqlens must span 0..{batch * s_k} (batch {batch} x seq {s_k}), got {cu[0]}..{cu[-1]}")
    if chunks is None:
        if s_q != s_k:
            raise ValueError(f"{s_q} queries but {s_k} keys per row and no context-parallel chunks")
        rows = set(range(0, batch * s_k + 1, s_k))
        if not rows <= set(cu):
            crossing = min(rows - set(cu))
            raise ValueError(f"an attention segment crosses the batch row boundary at token {crossing} "
                             f"(row length {s_k})")
        chunks = [(0, 0, batch * s_q)]
    elif batch != 1:
        raise ValueError("context-parallel attention takes one packed stream (batch 1)")
    pieces = []
    for local_start, global_start, length in chunks:
        end = global_start + length
        i = bisect.bisect_right(cu, global_start) - 1
        while i + 1 < len(cu) and cu[i] < end:
            a, e = cu[i], cu[i + 1]
            qa, qe = max(a, global_start), min(e, end)
            if qa < qe:
                k_len = (qe if causal else e) - a
                pieces.append((local_start + qa - global_start, a, qe - qa, k_len, causal and qe - qa != k_len))
            i += 1
    runs: list[list] = []
    covered = 0
    for q0, k0, q_len, k_len, lower_right in pieces:
        if q0 != covered:
            raise ValueError(f"attention segments leave query tokens {covered}..{q0} uncovered")
        covered = q0 + q_len
        last = runs[-1] if runs else None
        if (last and (last[3], last[4], last[5]) == (q_len, k_len, lower_right)
                and last[1] + last[2] * k_len == k0 and last[0] + last[2] * q_len == q0):
            last[2] += 1
        else:
            runs.append([q0, k0, 1, q_len, k_len, lower_right])
    if covered != batch * s_q:
        raise ValueError(f"attention segments cover {covered} of {batch * s_q} query tokens")
    return AttentionPlan([tuple(r) for r in runs], causal)


def segmented_attention(q, k, v, plan: AttentionPlan | None, *, causal: bool, dropout_p: float = 0.0,
                        scale: float | None = None) -> torch.Tensor:
    """Attention of ``q [b, h, s_q, d]`` over ``k, v [b, g, s_k, d]`` (``g`` divides ``h``: grouped-query
    attention without repeating K/V) within the ``plan``'s segments.

    ``plan=None``: one (causal or full) segment per row, a single SDPA call.
    """
    gqa = q.shape[1] != k.shape[1]
    if plan is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p, scale=scale,
                                              enable_gqa=gqa)
    b, h, s_q, d = q.shape
    g = k.shape[1]
    qf = q.transpose(0, 1).reshape(h, b * s_q, d)
    kf = k.transpose(0, 1).reshape(g, -1, d)
    vf = v.transpose(0, 1).reshape(g, -1, d)
    q_parts = torch.split(qf, [n * q_len for _, _, n, q_len, _, _ in plan.runs], dim=1)
    if plan.keys_tile and kf.shape[1] == sum(n * k_len for _, _, n, _, k_len, _ in plan.runs):
        sizes = [n * k_len for _, _, n, _, k_len, _ in plan.runs]
        k_parts, v_parts = torch.split(kf, sizes, dim=1), torch.split(vf, sizes, dim=1)
    else:  # context parallel: query chunks share their segment's earlier keys
        k_parts = [kf[:, k0:k0 + n * k_len] for _, k0, n, _, k_len, _ in plan.runs]
        v_parts = [vf[:, k0:k0 + n * k_len] for _, k0, n, _, k_len, _ in plan.runs]
    outs = []
    for (_, _, n, q_len, k_len, lower_right), qq, kk, vv in zip(plan.runs, q_parts, k_parts, v_parts):
        qq = qq.reshape(h, n, q_len, d).transpose(0, 1)
        kk = kk.reshape(g, n, k_len, d).transpose(0, 1)
        vv = vv.reshape(g, n, k_len, d).transpose(0, 1)
        mask = causal_lower_right(q_len, k_len) if lower_right else None
        o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, is_causal=plan.causal and not lower_right,
                                           dropout_p=dropout_p, scale=scale, enable_gqa=gqa)
        outs.append(o.transpose(0, 1).reshape(h, n * q_len, d))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
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
        if attention_bias is not None or attention_mask is not None:
            raise ValueError("the torch attention backend takes no attention_mask / attention_bias: pass "
                             "packed samples and windows as packed_seq_params=AttentionSegments(cu_seqlens=...)")
        if packed_seq_params is not None and not isinstance(packed_seq_params, AttentionSegments):
            raise TypeError("the torch attention backend takes packed_seq_params=AttentionSegments(...), "
                            f"got {type(packed_seq_params).__name__}")
        segments = packed_seq_params
        sq, b, nh, hd = query.shape
        # Q, K, V that are views of the fused QKV output would keep all of it alive for backward.
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        if self.cp_group is not None:
            if segments is None or segments.cp is None:
                raise ValueError("context-parallel attention needs AttentionSegments with the stream's CP split")
            key = gather_sequence_from_cp(key, self.cp_group, segments.cp)
            value = gather_sequence_from_cp(value, self.cp_group, segments.cp)
        plan = None if segments is None else segments.plan(self.layer_number, b, sq, key.shape[0], self.causal)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        out = segmented_attention(q, k, v, plan, causal=self.causal,
                                  dropout_p=self.dropout if self.training else 0.0, scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(sq, b, nh * hd)
