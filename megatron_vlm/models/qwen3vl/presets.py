"""Qwen3-VL's dense sizes as the hub's ``config.json``: ``longvlm tune --model`` presets.

Shapes of Qwen3-VL-2B/4B/8B/32B-Instruct (vocabulary 151,936; vision tower of 24 or 27 layers with
DeepStack taps; 256K native window, RoPE base 5e6, interleaved mRoPE [24, 20, 20]).
"""

from __future__ import annotations


def _qwen3vl_hub_config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, tied: bool,
                        vision: tuple[int, int, int, int, tuple[int, ...]]) -> dict:
    """The hub ``config.json`` of a Qwen3-VL size; ``vision``: (depth, hidden, intermediate, heads, taps)."""
    depth, v_hidden, v_intermediate, v_heads, taps = vision
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
        "vision_end_token_id": 151653, "tie_word_embeddings": tied,
        "text_config": {
            "model_type": "qwen3_vl_text", "attention_bias": False, "head_dim": 128, "hidden_act": "silu",
            "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-06, "rope_theta": 5000000, "vocab_size": 151936, "dtype": "bfloat16",
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        },
        "vision_config": {
            "model_type": "qwen3_vl", "depth": depth, "hidden_size": v_hidden, "intermediate_size": v_intermediate,
            "num_heads": v_heads, "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "out_hidden_size": hidden,
            "num_position_embeddings": 2304, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "deepstack_visual_indexes": list(taps),
        },
    }


_SMALL_VISION = (24, 1024, 4096, 16, (5, 11, 17))
_LARGE_VISION = (27, 1152, 4304, 16, (8, 16, 24))

PRESETS: dict[str, dict] = {
    "qwen3-vl-2b": _qwen3vl_hub_config(2048, 6144, 28, 16, 8, tied=True, vision=_SMALL_VISION),
    "qwen3-vl-4b": _qwen3vl_hub_config(2560, 9728, 36, 32, 8, tied=True, vision=_SMALL_VISION),
    "qwen3-vl-8b": _qwen3vl_hub_config(4096, 12288, 36, 32, 8, tied=False, vision=_LARGE_VISION),
    "qwen3-vl-32b": _qwen3vl_hub_config(5120, 25600, 64, 64, 8, tied=False, vision=_LARGE_VISION),
}
