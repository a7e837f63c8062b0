"""Whether Transformer Engine can be used on this machine (the ``te`` backend, fp8)."""

from __future__ import annotations

import importlib

import torch


def transformer_engine_error() -> str | None:
    """Why Transformer Engine cannot be used here, or ``None`` when it can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    try:
        importlib.import_module("transformer_engine.pytorch")
    except Exception as e:  # ImportError, or OSError from missing CUDA libraries
        return f"{type(e).__name__}: {e}"
    return None
