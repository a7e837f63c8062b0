"""The ``te`` core attention: Transformer Engine's fused attention over THD segments.

Imported only when ``model.attention_backend=te`` (it needs CUDA and Transformer Engine). The
segments of :class:`AttentionSegments` (packed samples, images, vision windows) become THD
``PackedSeqParams`` per layer: ``cu_seqlens`` of the real lengths and ``cu_seqlens_padded`` of the
positions in the stream, as Megatron-Core's ``get_thd_batch_on_this_cp_rank`` gives them. Under
context parallelism the local tokens are already in TE's per-sample zig-zag order (the split of
:mod:`megatron_vlm.models.context_parallel`, computed by code shared with the ``torch`` backend) and
TE's own CP (``cp_comm_type``: p2p ring, a2a or all_gather) runs inside ``TEDotProductAttention``.
"""

from __future__ import annotations

from megatron.core.extensions.transformer_engine import TEDotProductAttention
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_vlm.models.attention import AttentionSegments


class TESegmentedDotProductAttention(TEDotProductAttention):
    """``TEDotProductAttention`` that turns :class:`AttentionSegments` into THD ``PackedSeqParams``."""

    def forward(self, query, key, value, attention_mask, attn_mask_type, attention_bias=None,
                packed_seq_params=None, num_splits=None):
        if not isinstance(packed_seq_params, AttentionSegments):
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params, num_splits)
        sq, b = query.shape[:2]
        real, padded, longest = packed_seq_params.thd(self.layer_number)  # host-side: no device syncs
        real, padded = (t.to(device=query.device, non_blocking=True) for t in (real, padded))
        params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=real, cu_seqlens_kv=real, cu_seqlens_q_padded=padded,
                                 cu_seqlens_kv_padded=padded, max_seqlen_q=longest, max_seqlen_kv=longest)

        def thd(t):
            return t.transpose(0, 1).reshape(b * sq, *t.shape[2:])

        out = super().forward(thd(query), thd(key), thd(value), None, attn_mask_type, attention_bias, params,
                              num_splits)
        return out.reshape(b, sq, -1).transpose(0, 1).contiguous()
