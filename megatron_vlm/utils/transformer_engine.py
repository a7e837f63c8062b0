"""Whether Transformer Engine can be used on this machine (the ``te`` backend, fp8)."""

from __future__ import annotations

import importlib

from megatron_vlm.runtime.placement import current_placement


def transformer_engine_error() -> str | None:
    """Why Transformer Engine cannot be used here, or ``None`` when it can."""
    placement = current_placement()
    if not placement.cuda:
        return f"no CUDA GPU for this process ({placement.reason})"
    try:
        importlib.import_module("transformer_engine.pytorch")
    except Exception as e:  # ImportError, or OSError from missing CUDA libraries
        return f"{type(e).__name__}: {e}"
    return None
