"""Dispatch one ``longvlm convert`` action (shared by the CLI and ``longvlm.api.convert``)."""

from __future__ import annotations

from typing import Any


def run(action: str, cfg: Any) -> Any:
    """Run ``action`` with its config dataclass; returns a ``ConversionResult`` or ``VerifyResult``."""
    from checkpoint_tools import engine

    if action == "verify":
        from checkpoint_tools.verify import verify

        return verify(cfg)
    functions = {"hf-to-megatron": engine.hf_to_megatron, "megatron-to-hf": engine.megatron_to_hf,
                 "reshard": engine.reshard}
    if action not in functions:
        raise ValueError(f"unknown convert action {action!r}; choose one of {sorted([*functions, 'verify'])}")
    return functions[action](cfg)
