"""Checkpoint conversion between Hugging Face and Megatron-Core, for every registered model family."""
