"""Qwen2.5-VL checkpoint conversion between Hugging Face and Megatron-Core."""
