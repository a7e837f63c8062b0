"""A Hugging Face ``config.json``, read once: every shape the stack needs, and its rewrite.

Both layouts of the file are read: the hub's flat one (language fields at the top level,
``rope_theta`` and ``rope_scaling.mrope_section``) and transformers 5's nested one
(``text_config``, ``rope_parameters``). :class:`VLArch` holds what every family has; each family's
``arch.py`` subclasses it (``megatron_vlm.models.registry.read_arch`` picks the family by
``model_type``). The model config, the converter's mapping, the FLOP count and the tuner all take
an arch; nothing else parses ``config.json``. :func:`rewrite_hf_config` is the one way to write it
back with the RoPE settings a model was trained with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_vlm.errors import ConfigError
from megatron_vlm.models.config_json import load_hf_config
from megatron_vlm.models.config_json import require as _require


@dataclass(frozen=True, kw_only=True)
class VLArch:
    """The shapes and constants every family's ``config.json`` gives (``<family>/arch.py`` adds its own).

    ``from_hf`` of a family's subclass parses the file; ``family`` is its registry entry."""

    model_type = ""  # the subclass's HF model_type
    # language model
    num_layers: int
    hidden_size: int
    num_heads: int
    num_query_groups: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    rms_norm_eps: float
    hidden_act: str
    rope_theta: float
    mrope_section: tuple[int, ...]
    max_position_embeddings: int
    tie_word_embeddings: bool
    # vision tower and merger
    vision_layers: int
    vision_hidden_size: int
    vision_heads: int
    vision_ffn_hidden_size: int
    vision_hidden_act: str
    patch_size: int
    temporal_patch_size: int
    in_channels: int
    spatial_merge_size: int
    out_hidden_size: int
    vision_rope_theta: float
    # special tokens
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @property
    def vision_head_dim(self) -> int:
        return self.vision_hidden_size // self.vision_heads

    @property
    def family(self):
        from megatron_vlm.models.registry import get_family

        return get_family(self.model_type)

    @property
    def deepstack_layers(self) -> int:
        """Language layers that receive DeepStack visual features (0: none)."""
        return 0

    # What the tuner's memory and FLOP counts need to know of a family's layers (launch/tune/memory.py).
    @property
    def qk_layernorm(self) -> bool:
        """RMSNorm on each attention head's Q and K in the language model."""
        return False

    @property
    def vision_norm(self) -> str:
        """The vision tower's norms: ``rmsnorm`` or ``layernorm``."""
        return "rmsnorm"

    @property
    def vision_position_table(self) -> int:
        """Entries of a learned vision position table interpolated per image (0: none)."""
        return 0

    @classmethod
    def sections(cls, source: str | Path | dict[str, Any], name: str | None = None,
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any], str]:
        """``(raw, text config, vision config, RoPE parameters, where)`` of a ``config.json`` of this family;
        a ``ConfigError`` names a file of another architecture."""
        raw = load_hf_config(source)
        where = name or (str(source) if not isinstance(source, dict) else "config.json")
        archs = raw.get("architectures") or []
        architecture = cls.family_architecture()
        if raw.get("model_type", cls.model_type) != cls.model_type or (archs and architecture not in archs):
            raise ConfigError(f"{where}: wrong architecture: model_type={raw.get('model_type')!r}, "
                              f"architectures={archs}; expected {cls.model_type!r} ({architecture})")
        text = raw.get("text_config") or raw
        vis = _require(raw, "vision_config", "the top level", where)
        params = dict(text.get("rope_scaling") or raw.get("rope_scaling") or {})
        params.update(text.get("rope_parameters") or {})
        return raw, text, vis, params, where

    @classmethod
    def family_architecture(cls) -> str:
        from megatron_vlm.models.registry import get_family

        return get_family(cls.model_type).hf_class

    @classmethod
    def common_fields(cls, raw: dict[str, Any], text: dict[str, Any], vis: dict[str, Any], params: dict[str, Any],
                      where: str, defaults: dict[str, Any]) -> dict[str, Any]:
        """The :class:`VLArch` fields of a parsed ``config.json`` (``defaults``: the family's, for keys a
        file may leave out: ``rope_theta``, ``max_position_embeddings``, ``vision_hidden_act``,
        ``patch_size``, ``vision_rope_theta``)."""
        section = params.get("mrope_section")
        if section is None:
            raise ConfigError(f"{where}: no mrope_section (looked in rope_parameters and rope_scaling)")
        hidden = int(_require(text, "hidden_size", "the text config", where))
        heads = int(_require(text, "num_attention_heads", "the text config", where))
        head_dim = int(text.get("head_dim") or hidden // heads)
        if 2 * sum(section) != head_dim:
            raise ConfigError(f"{where}: mrope_section {list(section)} must sum to head_dim/2 = {head_dim // 2}")
        return dict(
            num_layers=int(_require(text, "num_hidden_layers", "the text config", where)),
            hidden_size=hidden,
            num_heads=heads,
            num_query_groups=int(text.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            ffn_hidden_size=int(_require(text, "intermediate_size", "the text config", where)),
            vocab_size=int(_require(text, "vocab_size", "the text config", where)),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            hidden_act=text.get("hidden_act", "silu"),
            rope_theta=float(params.get("rope_theta", text.get("rope_theta", defaults["rope_theta"]))),
            mrope_section=tuple(int(x) for x in section),
            max_position_embeddings=int(text.get("max_position_embeddings", defaults["max_position_embeddings"])),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            vision_layers=int(_require(vis, "depth", "vision_config", where)),
            vision_hidden_size=int(_require(vis, "hidden_size", "vision_config", where)),
            vision_heads=int(_require(vis, "num_heads", "vision_config", where)),
            vision_ffn_hidden_size=int(_require(vis, "intermediate_size", "vision_config", where)),
            vision_hidden_act=vis.get("hidden_act", defaults["vision_hidden_act"]),
            patch_size=int(vis.get("patch_size", defaults["patch_size"])),
            temporal_patch_size=int(vis.get("temporal_patch_size", 2)),
            in_channels=int(vis.get("in_channels", vis.get("in_chans", 3))),
            spatial_merge_size=int(vis.get("spatial_merge_size", 2)),
            out_hidden_size=int(vis.get("out_hidden_size", hidden)),
            vision_rope_theta=float((vis.get("rope_parameters") or {}).get("rope_theta", defaults["vision_rope_theta"])),
            image_token_id=int(raw.get("image_token_id", 151655)),
            video_token_id=int(raw.get("video_token_id", 151656)),
            vision_start_token_id=int(raw.get("vision_start_token_id", 151652)),
            vision_end_token_id=int(raw.get("vision_end_token_id", 151653)),
            raw=raw,
        )


def rewrite_hf_config(raw: dict[str, Any], *, rope_theta: float | None = None,
                      rope_scaling: dict[str, Any] | None = None, max_position_embeddings: int | None = None,
                      dtype: str | None = None) -> dict[str, Any]:
    """A copy of ``config.json``'s dict with the trained RoPE base / scaling / max positions / dtype set,
    in whichever layout it uses (flat ``rope_theta``/``rope_scaling`` of transformers 4.x, or
    ``text_config.rope_parameters`` of 5.x; both are updated where present). ``mrope_section`` is kept."""
    out = json.loads(json.dumps(raw))
    sections = [out] + ([out["text_config"]] if isinstance(out.get("text_config"), dict) else [])
    nested = any(isinstance(sec.get("rope_parameters"), dict) for sec in sections)
    if not nested:  # transformers 4.x flat layout: the top level carries the RoPE fields
        if rope_theta is not None:
            out.setdefault("rope_theta", rope_theta)
        if max_position_embeddings is not None:
            out.setdefault("max_position_embeddings", max_position_embeddings)
        if rope_scaling:
            out.setdefault("rope_scaling", {})
    for sec in sections:
        params = sec.get("rope_parameters")
        for target in (params, sec):
            if isinstance(target, dict) and "rope_theta" in target and rope_theta is not None:
                target["rope_theta"] = rope_theta
        if rope_scaling:
            for target in (params, sec.get("rope_scaling")):
                if isinstance(target, dict):
                    target.update(rope_scaling)
        if max_position_embeddings is not None and "max_position_embeddings" in sec:
            sec["max_position_embeddings"] = max_position_embeddings
    if dtype is not None:
        for key in ("torch_dtype", "dtype"):
            if key in out:
                out[key] = dtype
        if "torch_dtype" not in out and "dtype" not in out:
            out["dtype"] = dtype
    return out
