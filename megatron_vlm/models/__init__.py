"""Megatron-Core Qwen2.5-VL model: vision tower, mRoPE language model, layer specs."""
