"""Megatron-Core Qwen2.5-VL for long-context continued pre-training (LongPT)."""

__version__ = "0.1.0"
