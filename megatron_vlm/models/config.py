"""Megatron-Core ``TransformerConfig``s of Qwen2.5-VL from its Hugging Face config, and the RoPE base choice.

The shapes come from :class:`~megatron_vlm.models.hf_config.Qwen25VLArch` (any Qwen2.5-VL size),
the split from a :class:`~megatron_vlm.parallel.ParallelLayout`, the RoPE base from
:class:`RopeSettings` (the paper raises it by the NTK rule for 128K).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_vlm.errors import ConfigError
from megatron_vlm.models.hf_config import Qwen25VLArch, rewrite_hf_config
from megatron_vlm.models.specs import ATTENTION_BACKENDS, TRANSFORMER_IMPLS, block_spec, norm_module
from megatron_vlm.parallel import ParallelLayout
from megatron_vlm.runtime.placement import use_cuda

ROPE_BASE_MODES = ("keep", "explicit", "ntk")
RECOMPUTE_MODES = ("none", "selective", "full")
# selective recompute: Megatron-Core's modules, plus ``act`` (the dense MLP's activation output)
RECOMPUTE_MODULES = ("core_attn", "layernorm", "mlp", "act")


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
class RopeSettings:
    """The language model's RoPE base: ``keep`` the checkpoint's, an ``explicit`` one, or ``ntk`` for a target length."""

    mode: str = field(default="keep", metadata={"help": "keep | explicit | ntk", "choices": ROPE_BASE_MODES})
    base: float | None = field(default=None, metadata={"help": "the base for mode=explicit"})
    target_length: int | None = field(default=None, metadata={
        "help": "context length to train for (mode=ntk: the base is scaled for it); also the longest row allowed"})
    original_length: int = field(default=32768, metadata={"help": "the checkpoint's native context length (ntk)"})

    def resolve(self, base: float, head_dim: int) -> float:
        """The base to train with, given the checkpoint's ``base``."""
        if self.mode == "keep":
            return float(base)
        if self.mode == "explicit":
            if self.base is None or self.base <= 0:
                raise ConfigError(f"rope.mode=explicit needs a positive rope.base, got {self.base}")
            return float(self.base)
        if self.mode == "ntk":
            if not self.target_length:
                raise ConfigError("rope.mode=ntk needs rope.target_length (e.g. 131072)")
            return ntk_rope_base(base, head_dim, self.target_length, self.original_length)
        raise ConfigError(f"unknown rope.mode {self.mode!r}; choose one of {ROPE_BASE_MODES}")


@dataclass
class Qwen25VLConfig:
    """Everything needed to build ``Qwen25VLModel``: the two transformer configs and the model-level fields."""

    arch: Qwen25VLArch
    layout: ParallelLayout
    language: TransformerConfig
    vision: Qwen25VisionTransformerConfig
    rotary_base: float
    max_sequence_length: int  # the longest row the model is set up for (its RoPE target length)
    attention_backend: str = "torch"
    transformer_impl: str = "local"
    recompute_activation: bool = False  # selective recompute of the MLPs' activation (module ``act``)

    def block_spec(self, num_layers: int, *, causal: bool):
        """The transformer-block spec of ``num_layers`` language (``causal``) or vision layers."""
        return block_spec(self.transformer_impl, self.attention_backend, num_layers, causal=causal,
                          recompute_activation=self.recompute_activation)

    def norm_module(self) -> type:
        return norm_module(self.transformer_impl)

    @property
    def vocab_size(self) -> int:
        return self.arch.vocab_size

    @property
    def tie_word_embeddings(self) -> bool:
        return self.arch.tie_word_embeddings

    @property
    def image_token_id(self) -> int:
        return self.arch.image_token_id

    def to_hf_config(self) -> dict[str, Any]:
        """The source ``config.json`` with the RoPE base and length actually used (what a checkpoint records)."""
        longest = max(self.max_sequence_length, self.arch.max_position_embeddings)
        return rewrite_hf_config(self.arch.raw, rope_theta=self.rotary_base, max_position_embeddings=longest)


# Transformer Engine's first release whose context parallelism takes packed (THD) rows, per cp_comm_type
# (TE's attention/dot_product_attention/context_parallel.py: p2p since 1.10, a2a since 2.11, all_gather 2.18)
TE_THD_CP_MIN_VERSION = {"p2p": "1.10", "a2a": "2.11", "all_gather": "2.18"}


def backend_problems(transformer_impl: str, attention_backend: str, layout: ParallelLayout, *, fp8: bool,
                     recompute: str = "none", recompute_modules=("core_attn",), arch: Qwen25VLArch | None = None,
                     te_version: str | None = None) -> list[str]:
    """Why these layer choices cannot run (empty: they can), each reason with the recipe key and what works.

    Checks that need the model's shapes run when ``arch`` is given; Transformer Engine's version limits
    when ``te_version`` is (the machine that will train).
    """
    problems = []
    if fp8 and transformer_impl != "te":
        problems.append("train.precision=fp8 needs model.transformer_impl=te (the FP8 GEMMs are Transformer "
                        "Engine's linears); set model.transformer_impl=te, or train.precision=bf16")
    comm = layout.cp_comm_type_for(attention_backend)
    if layout.cp > 1 and attention_backend == "torch" and comm != "all_gather":
        problems.append(f"parallel.cp_comm_type={comm} is Transformer Engine's; the torch attention backend "
                        "all-gathers K/V over the CP group: leave parallel.cp_comm_type unset (or all_gather), "
                        "or set model.attention_backend=te")
    if layout.cp > 1 and attention_backend == "te":
        if comm == "a2a" and arch is not None:
            heads, groups = arch.num_heads // layout.tp, arch.num_query_groups // layout.tp
            if heads % layout.cp or groups % layout.cp:
                problems.append(f"parallel.cp_comm_type=a2a splits attention heads over the CP group: {heads} query "
                                f"and {groups} KV heads per TP rank do not divide by cp={layout.cp}; use "
                                "parallel.cp_comm_type=p2p")
        needed = TE_THD_CP_MIN_VERSION[comm]
        if te_version is not None and _version(te_version) < _version(needed):
            problems.append(f"parallel.cp_comm_type={comm} over packed rows needs Transformer Engine >= {needed} "
                            f"(found {te_version}); upgrade it or use parallel.cp_comm_type=p2p")
    if recompute == "selective":
        modules = set(recompute_modules)
        if not modules:
            problems.append("model.recompute=selective with no model.recompute_modules: list some "
                            f"({', '.join(RECOMPUTE_MODULES)}) or set model.recompute=none")
        if transformer_impl == "te" and "layernorm" in modules:
            problems.append("model.recompute_modules has layernorm, which does nothing with model.transformer_impl=te "
                            "(Transformer Engine fuses the norms into its linears): drop it")
        if fp8 and "act" in modules:
            problems.append("model.recompute_modules has act, which frees nothing with train.precision=fp8 "
                            "(Transformer Engine keeps its own FP8 copy of linear_fc2's input): drop it")
    return problems


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def ntk_rope_base(base: float, head_dim: int, target_length: int, original_length: int) -> float:
    """NTK-aware base for a context ``target_length / original_length`` times longer: ``base * s^(d/(d-2))``.

    Equals transformers' dynamic-NTK base with ``factor=1`` evaluated at ``seq_len=target_length``.
    """
    if target_length <= 0 or original_length <= 0:
        raise ValueError(f"lengths must be positive, got target {target_length}, original {original_length}")
    scale = target_length / original_length
    return float(base * scale ** (head_dim / (head_dim - 2)))


def _activation(name: str):
    table = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
    if name not in table:
        raise ConfigError(f"config.json: unsupported hidden_act {name!r}")
    return table[name]


def qwen25vl_config_from_hf(
    source: str | Path | dict[str, Any] | Qwen25VLArch,
    *,
    layout: ParallelLayout | None = None,
    attention_backend: str = "torch",
    transformer_impl: str = "local",
    params_dtype: torch.dtype = torch.float32,
    rope: RopeSettings | None = None,
    recompute: str = "none",
    recompute_modules: tuple[str, ...] | list[str] = ("core_attn",),
    use_cpu_initialization: bool | None = None,
    **language_overrides: Any,
) -> Qwen25VLConfig:
    """Build the Megatron configs of Qwen2.5-VL from its Hugging Face config (dict, file, checkpoint dir or arch).

    ``transformer_impl``: the layers' linears and norms (``local`` or ``te``); ``attention_backend``: their
    core attention (``torch`` or ``te``); see :mod:`megatron_vlm.models.specs`. ``recompute``: ``none``,
    ``selective`` (the ``recompute_modules``: ``core_attn``, ``layernorm``, ``mlp``, ``act``) or ``full``
    (every layer, uniform). ``language_overrides`` are extra ``TransformerConfig`` fields of the language model.
    """
    for key, value, choices in (("attention backend", attention_backend, ATTENTION_BACKENDS),
                                ("transformer_impl", transformer_impl, TRANSFORMER_IMPLS),
                                ("recompute mode", recompute, RECOMPUTE_MODES)):
        if value not in choices:
            raise ConfigError(f"unknown {key} {value!r}; choose one of {choices}")
    unknown = sorted(set(recompute_modules) - set(RECOMPUTE_MODULES))
    if unknown:
        raise ConfigError(f"unknown recompute module(s) {unknown}; choose from {RECOMPUTE_MODULES}")
    arch = source if isinstance(source, Qwen25VLArch) else Qwen25VLArch.from_hf(source)
    layout = layout or ParallelLayout()
    rope = rope or RopeSettings()
    layout.check_model(arch.num_layers, arch.num_heads, arch.num_query_groups, arch.vision_heads)
    base = rope.resolve(arch.rope_theta, arch.head_dim)
    if use_cpu_initialization is None:  # weights where this process computes (runtime.placement)
        use_cpu_initialization = not use_cuda()
    granularity = None if recompute == "none" else recompute
    common = dict(
        normalization="RMSNorm",
        gated_linear_unit=True,
        add_qkv_bias=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=True,  # SwiGLU as one autograd function that keeps only its input
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        tensor_model_parallel_size=layout.tp,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=use_cpu_initialization,
        recompute_granularity=granularity,
        recompute_method="uniform" if recompute == "full" else None,
        recompute_num_layers=1 if recompute == "full" else None,
        recompute_modules=[m for m in recompute_modules if m != "act"] if recompute == "selective" else None,
    )
    language_kwargs = dict(
        common,
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        ffn_hidden_size=arch.ffn_hidden_size,
        layernorm_epsilon=arch.rms_norm_eps,
        activation_func=_activation(arch.hidden_act),
        add_bias_linear=False,
        mrope_section=list(arch.mrope_section),
        rotary_interleaved=False,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp,
        num_layers_in_first_pipeline_stage=layout.first_stage_layers,
        context_parallel_size=layout.cp,
        cp_comm_type=layout.cp_comm_type_for(attention_backend),
        sequence_parallel=layout.sp,
        # rows are trained at their own length, so pipeline stages exchange shapes per micro-batch (not
        # with the interleaved schedule, whose prefetching receives take the previous shape: rows are
        # then padded to one length); megatron-core refuses that with its default MoE dispatcher even
        # for a dense model
        variable_seq_lengths=layout.pp > 1 and layout.vpp is None,
        moe_token_dispatcher_type="alltoall",
        # gloo pairs a batch of sends to the same peer by order only: with pp=2 (next == previous stage)
        # the interleaved schedule's activation and gradient cross; NCCL batches them correctly
        batch_p2p_comm=torch.cuda.is_available(),
    )
    language_kwargs.update(language_overrides)
    language = TransformerConfig(**language_kwargs)
    vision = Qwen25VisionTransformerConfig(
        **common,
        num_layers=arch.vision_layers,
        hidden_size=arch.vision_hidden_size,
        num_attention_heads=arch.vision_heads,
        num_query_groups=arch.vision_heads,
        kv_channels=arch.vision_head_dim,
        ffn_hidden_size=arch.vision_ffn_hidden_size,
        layernorm_epsilon=1e-6,
        activation_func=_activation(arch.vision_hidden_act),
        add_bias_linear=True,
        patch_size=arch.patch_size,
        temporal_patch_size=arch.temporal_patch_size,
        in_channels=arch.in_channels,
        spatial_merge_size=arch.spatial_merge_size,
        window_size=arch.window_size,
        fullatt_block_indexes=arch.fullatt_block_indexes,
        out_hidden_size=arch.out_hidden_size,
        vision_rope_theta=arch.vision_rope_theta,
    )
    return Qwen25VLConfig(
        arch=arch,
        layout=layout,
        language=language,
        vision=vision,
        rotary_base=base,
        max_sequence_length=rope.target_length or arch.max_position_embeddings,
        attention_backend=attention_backend,
        transformer_impl=transformer_impl,
        recompute_activation=recompute == "selective" and "act" in recompute_modules,
    )


__all__ = [
    "ATTENTION_BACKENDS", "RECOMPUTE_MODULES", "TRANSFORMER_IMPLS", "Qwen25VLConfig", "backend_problems", "Qwen25VisionTransformerConfig", "RopeSettings", "ntk_rope_base",
    "qwen25vl_config_from_hf",
]
