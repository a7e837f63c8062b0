"""The ``te`` attention backend: Transformer Engine attention fed with :class:`AttentionSegments`.

Imported only when the ``te`` backend is chosen (it needs CUDA and Transformer Engine). Segments
become THD ``PackedSeqParams`` per layer (vision windows vs. full-attention layers); without
segments the call is TE's own ``sbhd`` path, which also does TE's context parallelism.
"""

from __future__ import annotations

import torch
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
        if self.config.context_parallel_size > 1:
            raise NotImplementedError("te backend: packed segments with context parallelism need TE's per-sample "
                                      "THD CP layout; use attention_backend='torch' for packed rows with CP")
        sq, b = query.shape[:2]
        cu = packed_seq_params.for_layer(self.layer_number)
        max_len = int((cu[1:] - cu[:-1]).max())  # host-side: cu_seqlens stay on the CPU
        cu = cu.to(device=query.device, dtype=torch.int32)
        params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                 max_seqlen_q=max_len, max_seqlen_kv=max_len)

        def thd(t):
            return t.transpose(0, 1).reshape(b * sq, *t.shape[2:])

        out = super().forward(thd(query), thd(key), thd(value), None, attn_mask_type, attention_bias, params,
                              num_splits)
        return out.reshape(b, sq, -1).transpose(0, 1).contiguous()
