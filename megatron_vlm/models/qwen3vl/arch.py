"""Qwen3-VL's ``config.json``: the shared :class:`VLArch` fields plus DeepStack, the learned vision positions
and interleaved mRoPE."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_vlm.errors import ConfigError
from megatron_vlm.models.hf_config import VLArch

DEFAULTS = dict(rope_theta=5_000_000.0, max_position_embeddings=262144, vision_hidden_act="gelu_pytorch_tanh",
                patch_size=16, vision_rope_theta=10000.0)


@dataclass(frozen=True, kw_only=True)
class Qwen3VLArch(VLArch):
    """The shapes and constants of one dense Qwen3-VL model, from its ``config.json``."""

    model_type = "qwen3_vl"
    num_position_embeddings: int               # learned vision positions: a sqrt x sqrt grid, interpolated
    deepstack_visual_indexes: tuple[int, ...]  # vision layers whose outputs feed the first language layers
    mrope_interleaved: bool                    # T/H/W frequencies interleaved (t h w t h w ...), not in blocks

    @property
    def deepstack_layers(self) -> int:
        return len(self.deepstack_visual_indexes)

    @property
    def vision_mlp_matrices(self) -> int:
        """Matrices of a vision MLP (plain: fc1, fc2)."""
        return 2

    @property
    def qk_layernorm(self) -> bool:
        return True

    @property
    def vision_norm(self) -> str:
        return "layernorm"

    @property
    def vision_position_table(self) -> int:
        return self.num_position_embeddings

    # The windowed view the tuner's memory model reads (launch/tune/memory.py): no windows, every
    # vision layer attends to its whole frame (a "window" wider than any image).
    @property
    def fullatt_block_indexes(self) -> tuple[int, ...]:
        return tuple(range(self.vision_layers))

    @property
    def window_size(self) -> int:
        return self.patch_size * self.spatial_merge_size * 2 ** 20

    @classmethod
    def from_hf(cls, source: str | Path | dict[str, Any], *, name: str | None = None) -> Qwen3VLArch:
        """Parse a ``config.json`` (dict, file or checkpoint dir); errors name ``name`` (default: the source)."""
        raw, text, vis, params, where = cls.sections(source, name)
        if text.get("attention_bias"):
            raise ConfigError(f"{where}: attention_bias=true; Qwen3-VL's attention has no biases")
        if "num_experts" in text or "moe_intermediate_size" in text:
            raise ConfigError(f"{where}: a Qwen3-VL MoE config; this stack trains the dense models "
                              "(docs/model.md says where experts would go)")
        common = cls.common_fields(raw, text, vis, params, where, DEFAULTS)
        indexes = tuple(int(i) for i in vis.get("deepstack_visual_indexes", (8, 16, 24)))
        if any(not 0 <= i < common["vision_layers"] for i in indexes) or len(indexes) > common["num_layers"]:
            raise ConfigError(f"{where}: deepstack_visual_indexes {list(indexes)} must be vision layers "
                              f"(0..{common['vision_layers'] - 1}), at most one per language layer")
        return cls(**common, num_position_embeddings=int(vis.get("num_position_embeddings", 2304)),
                   deepstack_visual_indexes=indexes, mrope_interleaved=bool(params.get("mrope_interleaved", True)))
