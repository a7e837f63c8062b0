"""Tiny random Qwen3-VL configs (tests and the demo; no download).

The shapes keep every structural feature of the 8B: GQA, q/k RMSNorm, no QKV bias, interleaved
mRoPE, untied output layer (tied as an option), a LayerNorm/GELU vision tower with learned
positions interpolated to each image, and DeepStack taps feeding the first language layers. Token
ids are the real Qwen3-VL ids, so a tiny model, the offline tokenizer and built datasets fit together.
"""

from __future__ import annotations

from typing import Any

QWEN3VL_VOCAB_SIZE = 151936  # the 2B/4B/8B embedding size; covers the 151,669 tokenizer ids


def tiny_qwen3vl_config(
    *,
    vocab_size: int = QWEN3VL_VOCAB_SIZE,
    hidden_size: int = 64,
    num_layers: int = 3,  # DeepStack feeds layers 0 and 1: a layer after them (as in every real size)
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    mrope_section: tuple[int, int, int] = (2, 3, 3),
    vision_depth: int = 4,
    vision_hidden_size: int = 32,
    vision_heads: int = 2,
    vision_intermediate_size: int = 64,
    num_position_embeddings: int = 16,
    deepstack_visual_indexes: tuple[int, ...] = (0, 2),
    tie_word_embeddings: bool = False,
    rope_theta: float = 5_000_000.0,
    max_position_embeddings: int = 262144,
    **text_overrides: Any,
):
    """A ``Qwen3VLConfig`` with tiny shapes; ``sum(mrope_section)`` must be head_dim / 2."""
    from transformers import Qwen3VLConfig

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
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": list(mrope_section),
                         "mrope_interleaved": True},
        tie_word_embeddings=tie_word_embeddings,
        **text_overrides,
    )
    vision_config = dict(
        depth=vision_depth,
        hidden_size=vision_hidden_size,
        intermediate_size=vision_intermediate_size,
        num_heads=vision_heads,
        out_hidden_size=hidden_size,
        num_position_embeddings=num_position_embeddings,
        deepstack_visual_indexes=list(deepstack_visual_indexes),
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=tie_word_embeddings,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
    )
