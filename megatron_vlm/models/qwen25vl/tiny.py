"""Tiny random Qwen2.5-VL checkpoints built from a config (tests and the demo; no download).

The shapes keep every structural feature of the 7B: GQA, QKV bias, mRoPE sections, untied output
layer, vision window attention with full-attention layers, the 2x2 patch merger. Token ids are the
real Qwen2.5-VL ids (the offline tokenizer in ``megatron_vlm.tokenizer`` uses the real vocabulary),
so a tiny model, the tokenizer and built datasets fit together. ``ModelFamily.save_tiny_checkpoint`` writes one.
"""

from __future__ import annotations

from typing import Any

QWEN25VL_VOCAB_SIZE = 151936  # the 3B's embedding size; covers the 151,669 tokenizer ids


def tiny_qwen25vl_config(
    *,
    vocab_size: int = QWEN25VL_VOCAB_SIZE,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    mrope_section: tuple[int, int, int] = (2, 3, 3),
    vision_depth: int = 4,
    vision_hidden_size: int = 32,
    vision_heads: int = 2,
    vision_intermediate_size: int = 64,
    fullatt_block_indexes: tuple[int, ...] = (1, 3),
    window_size: int = 112,
    tie_word_embeddings: bool = False,
    rope_theta: float = 1_000_000.0,
    max_position_embeddings: int = 32768,
    **text_overrides: Any,
):
    """A ``Qwen2_5_VLConfig`` with tiny shapes; ``sum(mrope_section)`` must be head_dim / 2."""
    from transformers import Qwen2_5_VLConfig

    head_dim = hidden_size // num_heads
    if 2 * sum(mrope_section) != head_dim:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                         "mrope_section": list(mrope_section)},
        tie_word_embeddings=tie_word_embeddings,
        **text_overrides,
    )
    vision_config = dict(
        depth=vision_depth,
        hidden_size=vision_hidden_size,
        intermediate_size=vision_intermediate_size,
        num_heads=vision_heads,
        out_hidden_size=hidden_size,
        fullatt_block_indexes=list(fullatt_block_indexes),
        window_size=window_size,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=tie_word_embeddings,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
    )
