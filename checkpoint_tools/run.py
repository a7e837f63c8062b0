"""The actions of ``longvlm convert``, in one table shared by the CLI and ``longvlm.api.convert``, and their dispatch."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from checkpoint_tools.config import HFToMegatronConfig, MegatronToHFConfig, ReshardConfig, VerifyConfig


@dataclass(frozen=True)
class Action:
    """One ``longvlm convert`` action: its options (a config dataclass), its ``--help`` line and the function
    (``"module:name"``, imported when run) that takes the config."""

    config: type
    summary: str
    function: str


ACTIONS: dict[str, Action] = {
    "hf-to-megatron": Action(
        HFToMegatronConfig, "Hugging Face safetensors (any registered model family) -> Megatron-Core torch_dist "
        "checkpoint.", "checkpoint_tools.engine:hf_to_megatron"),
    "megatron-to-hf": Action(
        MegatronToHFConfig, "Megatron-Core torch_dist checkpoint -> Hugging Face directory (safetensors shards, "
        "index, config with the trained RoPE settings, tokenizer and processor files).",
        "checkpoint_tools.engine:megatron_to_hf"),
    "reshard": Action(ReshardConfig, "Re-save a Megatron checkpoint for another TP/PP layout.",
                      "checkpoint_tools.engine:reshard"),
    "verify": Action(
        VerifyConfig, "Compare the logits of an HF checkpoint and a Megatron checkpoint on a multimodal probe (from "
        "the HF directory's tokenizer, or from config.json's token ids if it has none); exit 1 above --atol, 2 on "
        "bad input.", "checkpoint_tools.verify:verify"),
}


def run(action: str, cfg: Any) -> Any:
    """Run ``action`` with its config dataclass; returns a ``ConversionResult`` or ``VerifyResult``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown convert action {action!r}; choose one of {sorted(ACTIONS)}")
    module, _, name = ACTIONS[action].function.partition(":")
    return getattr(importlib.import_module(module), name)(cfg)
