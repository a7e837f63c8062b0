"""Whether Transformer Engine can be used on this machine (TE linears, TE attention, FP8), and its version."""

from __future__ import annotations

import importlib
from importlib import metadata

from megatron_vlm.runtime.placement import current_placement

_DISTRIBUTIONS = ("transformer_engine", "transformer-engine", "transformer_engine_torch", "transformer_engine_cu12",
                  "transformer_engine_cu13")


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


def transformer_engine_version() -> str | None:
    """The installed Transformer Engine's version (``None``: not installed)."""
    for name in _DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None
