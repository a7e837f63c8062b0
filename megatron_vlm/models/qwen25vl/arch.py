"""Qwen2.5-VL's ``config.json``: the shared :class:`VLArch` fields plus its vision windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_vlm.models.hf_config import VLArch

DEFAULTS = dict(rope_theta=1_000_000.0, max_position_embeddings=32768, vision_hidden_act="silu", patch_size=14,
                vision_rope_theta=10000.0)


@dataclass(frozen=True, kw_only=True)
class Qwen25VLArch(VLArch):
    """The shapes and constants of one Qwen2.5-VL model, from its ``config.json``."""

    model_type = "qwen2_5_vl"
    window_size: int
    fullatt_block_indexes: tuple[int, ...]

    @property
    def vision_mlp_matrices(self) -> int:
        """Matrices of a vision MLP (SwiGLU: gate, up, down)."""
        return 3

    @classmethod
    def from_hf(cls, source: str | Path | dict[str, Any], *, name: str | None = None) -> Qwen25VLArch:
        """Parse a ``config.json`` (dict, file or checkpoint dir); errors name ``name`` (default: the source)."""
        raw, text, vis, params, where = cls.sections(source, name)
        return cls(**cls.common_fields(raw, text, vis, params, where, DEFAULTS),
                   window_size=int(vis.get("window_size", 112)),
                   fullatt_block_indexes=tuple(int(i) for i in vis.get("fullatt_block_indexes", ())))
