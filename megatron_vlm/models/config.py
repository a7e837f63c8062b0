"""Hugging Face Qwen2.5-VL ``config.json`` -> Megatron-Core ``TransformerConfig``s, and RoPE base choice.

Reads both layouts of the file: the hub's flat one (language fields at the top level,
``rope_scaling.mrope_section``) and transformers 5's nested one (``text_config``,
``rope_parameters``). Any Qwen2.5-VL size works: every shape comes from the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

ATTENTION_BACKENDS = ("torch", "te")
ROPE_BASE_MODES = ("keep", "explicit", "ntk")


@dataclass
class Qwen25VisionTransformerConfig(TransformerConfig):
    """``TransformerConfig`` of the vision tower plus its image geometry."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = ()
    out_hidden_size: int = 0
    vision_rope_theta: float = 10000.0


@dataclass
class Qwen25VLConfig:
    """Everything needed to build ``Qwen25VLModel``: the two transformer configs and the model-level fields."""

    language: TransformerConfig
    vision: Qwen25VisionTransformerConfig
    vocab_size: int
    max_sequence_length: int
    rotary_base: float
    tie_word_embeddings: bool
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    attention_backend: str = "torch"
    hf_config: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_hf_config(self) -> dict[str, Any]:
        """The source ``config.json`` with the RoPE base actually used (for checkpoint export)."""
        out = json.loads(json.dumps(self.hf_config))
        text = out.get("text_config", out)
        if isinstance(text.get("rope_parameters"), dict):
            text["rope_parameters"]["rope_theta"] = self.rotary_base
        if "rope_theta" in text or "rope_parameters" not in text:
            text["rope_theta"] = self.rotary_base
        return out


def ntk_rope_base(base: float, head_dim: int, target_length: int, original_length: int) -> float:
    """NTK-aware base for a context ``target_length / original_length`` times longer: ``base * s^(d/(d-2))``.

    Equals transformers' dynamic-NTK base with ``factor=1`` evaluated at ``seq_len=target_length``.
    """
    if target_length <= 0 or original_length <= 0:
        raise ValueError(f"lengths must be positive, got target {target_length}, original {original_length}")
    scale = target_length / original_length
    return float(base * scale ** (head_dim / (head_dim - 2)))


def resolve_rope_base(base: float, head_dim: int, mode: str = "keep", *, value: float | None = None,
                      target_length: int | None = None, original_length: int | None = None) -> float:
    """The RoPE base to train with: ``keep`` the config's, an ``explicit`` value, or ``ntk`` from a target length."""
    if mode == "keep":
        return float(base)
    if mode == "explicit":
        if value is None or value <= 0:
            raise ValueError(f"rope base mode 'explicit' needs a positive value, got {value}")
        return float(value)
    if mode == "ntk":
        if target_length is None or original_length is None:
            raise ValueError("rope base mode 'ntk' needs target_length and original_length")
        return ntk_rope_base(base, head_dim, target_length, original_length)
    raise ValueError(f"unknown rope base mode {mode!r}; choose one of {ROPE_BASE_MODES}")


def load_hf_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A config dict from a dict, a ``config.json`` path or a checkpoint directory."""
    if isinstance(source, dict):
        return source
    if hasattr(source, "to_dict"):  # a transformers PretrainedConfig
        return source.to_dict()
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no Hugging Face config.json there") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _require(section: dict[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise KeyError(f"config.json: missing '{key}' in {where}")
    return section[key]


def _activation(name: str):
    table = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
    if name not in table:
        raise ValueError(f"config.json: unsupported hidden_act {name!r}")
    return table[name]


def _text_rope(text: dict[str, Any]) -> tuple[float, list[int]]:
    params = text.get("rope_parameters") or {}
    scaling = text.get("rope_scaling") or {}
    theta = params.get("rope_theta", text.get("rope_theta", 1_000_000.0))
    section = params.get("mrope_section") or scaling.get("mrope_section")
    if section is None:
        raise KeyError("config.json: no mrope_section (looked in rope_parameters and rope_scaling)")
    return float(theta), [int(x) for x in section]


def qwen25vl_config_from_hf(
    source: str | Path | dict[str, Any],
    *,
    attention_backend: str = "torch",
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    sequence_parallel: bool = False,
    num_layers_in_first_pipeline_stage: int | None = None,
    params_dtype: torch.dtype = torch.float32,
    rope_base_mode: str = "keep",
    rope_base: float | None = None,
    rope_target_length: int | None = None,
    rope_original_length: int = 32768,
    use_cpu_initialization: bool | None = None,
    recompute_granularity: str | None = None,
    **language_overrides: Any,
) -> Qwen25VLConfig:
    """Build the Megatron configs of Qwen2.5-VL from its Hugging Face config (dict, file or checkpoint dir)."""
    if attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {attention_backend!r}; choose one of {ATTENTION_BACKENDS}")
    hf = load_hf_config(source)
    text = hf.get("text_config") or hf
    vis = _require(hf, "vision_config", "the top level")

    hidden = int(_require(text, "hidden_size", "the text config"))
    heads = int(_require(text, "num_attention_heads", "the text config"))
    head_dim = int(text.get("head_dim") or hidden // heads)
    theta, mrope_section = _text_rope(text)
    if 2 * sum(mrope_section) != head_dim:
        raise ValueError(f"config.json: mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    base = resolve_rope_base(theta, head_dim, rope_base_mode, value=rope_base,
                             target_length=rope_target_length, original_length=rope_original_length)
    tie = bool(hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    bf16 = params_dtype == torch.bfloat16
    fp16 = params_dtype == torch.float16
    if use_cpu_initialization is None:
        use_cpu_initialization = not torch.cuda.is_available()
    common = dict(
        normalization="RMSNorm",
        gated_linear_unit=True,
        add_qkv_bias=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        tensor_model_parallel_size=tensor_model_parallel_size,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=bf16,
        fp16=fp16,
        use_cpu_initialization=use_cpu_initialization,
        recompute_granularity=recompute_granularity,
        recompute_method="uniform" if recompute_granularity == "full" else None,
        recompute_num_layers=1 if recompute_granularity == "full" else None,
    )
    language_kwargs = dict(
        common,
        num_layers=int(_require(text, "num_hidden_layers", "the text config")),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_query_groups=int(text.get("num_key_value_heads") or heads),
        kv_channels=head_dim,
        ffn_hidden_size=int(_require(text, "intermediate_size", "the text config")),
        layernorm_epsilon=float(text.get("rms_norm_eps", 1e-6)),
        activation_func=_activation(text.get("hidden_act", "silu")),
        add_bias_linear=False,
        mrope_section=mrope_section,
        rotary_interleaved=False,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        num_layers_in_first_pipeline_stage=num_layers_in_first_pipeline_stage,
        context_parallel_size=context_parallel_size,
        sequence_parallel=sequence_parallel,
    )
    language_kwargs.update(language_overrides)
    language = TransformerConfig(**language_kwargs)

    v_hidden = int(_require(vis, "hidden_size", "vision_config"))
    v_heads = int(_require(vis, "num_heads", "vision_config"))
    v_rope = vis.get("rope_parameters") or {}
    vision = Qwen25VisionTransformerConfig(
        **common,
        num_layers=int(_require(vis, "depth", "vision_config")),
        hidden_size=v_hidden,
        num_attention_heads=v_heads,
        num_query_groups=v_heads,
        kv_channels=v_hidden // v_heads,
        ffn_hidden_size=int(_require(vis, "intermediate_size", "vision_config")),
        layernorm_epsilon=1e-6,
        activation_func=_activation(vis.get("hidden_act", "silu")),
        add_bias_linear=True,
        patch_size=int(vis.get("patch_size", 14)),
        temporal_patch_size=int(vis.get("temporal_patch_size", 2)),
        in_channels=int(vis.get("in_channels", vis.get("in_chans", 3))),
        spatial_merge_size=int(vis.get("spatial_merge_size", 2)),
        window_size=int(vis.get("window_size", 112)),
        fullatt_block_indexes=tuple(int(i) for i in vis.get("fullatt_block_indexes", ())),
        out_hidden_size=int(vis.get("out_hidden_size", hidden)),
        vision_rope_theta=float(v_rope.get("rope_theta", 10000.0)),
    )
    return Qwen25VLConfig(
        language=language,
        vision=vision,
        vocab_size=int(_require(text, "vocab_size", "the text config")),
        max_sequence_length=int(text.get("max_position_embeddings", 32768)),
        rotary_base=base,
        tie_word_embeddings=tie,
        image_token_id=int(hf.get("image_token_id", 151655)),
        video_token_id=int(hf.get("video_token_id", 151656)),
        vision_start_token_id=int(hf.get("vision_start_token_id", 151652)),
        attention_backend=attention_backend,
        hf_config=hf,
    )


__all__ = [
    "ATTENTION_BACKENDS", "Qwen25VLConfig", "Qwen25VisionTransformerConfig", "load_hf_config",
    "ntk_rope_base", "qwen25vl_config_from_hf", "resolve_rope_base",
]
