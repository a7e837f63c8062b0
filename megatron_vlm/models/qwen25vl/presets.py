"""Qwen2.5-VL's sizes as the hub's ``config.json`` (transformers 4.x flat layout): ``longvlm tune --model`` presets."""

from __future__ import annotations


def _qwen25vl_hub_config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                         vocab: int, tied: bool) -> dict:
    """The hub ``config.json`` of a Qwen2.5-VL size (all sizes share the vision tower)."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "hidden_act": "silu", "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": 128000, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": tied,
        "vocab_size": vocab, "image_token_id": 151655, "video_token_id": 151656,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653, "torch_dtype": "bfloat16",
        "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                          "num_heads": 16, "in_chans": 3, "out_hidden_size": hidden, "patch_size": 14,
                          "spatial_merge_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                          "temporal_patch_size": 2},
    }


PRESETS: dict[str, dict] = {
    "qwen2.5-vl-3b": _qwen25vl_hub_config(2048, 11008, 36, 16, 2, 151936, tied=True),
    "qwen2.5-vl-7b": _qwen25vl_hub_config(3584, 18944, 28, 28, 4, 152064, tied=False),
    "qwen2.5-vl-32b": _qwen25vl_hub_config(5120, 27648, 64, 40, 8, 152064, tied=False),
    "qwen2.5-vl-72b": _qwen25vl_hub_config(8192, 29568, 80, 64, 8, 152064, tied=False),
}
