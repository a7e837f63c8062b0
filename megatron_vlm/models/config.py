"""Megatron-Core ``TransformerConfig``s of a vision-language model from its Hugging Face config, and the RoPE base.

What every family shares lives here: the ``TransformerConfig`` keywords that are not the model's
(fusions, dropout, dtype, parallel sizes, recompute, ...: :func:`transformer_kwargs`), the
language model's (:func:`language_kwargs`), the RoPE base (:class:`RopeSettings`; the paper raises it
by the NTK rule for 128K) and the model config record (:class:`VLModelConfig`). A family's
``config.py`` adds its own layer choices and vision config through :func:`build_model_config`. The
shapes come from the family's arch (``megatron_vlm.models.hf_config.VLArch``), the split from a
:class:`~megatron_vlm.parallel.ParallelLayout`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_vlm.errors import ConfigError
from megatron_vlm.models.hf_config import VLArch, rewrite_hf_config
from megatron_vlm.models.specs import ATTENTION_BACKENDS, TRANSFORMER_IMPLS, block_spec, norm_module
from megatron_vlm.parallel import ParallelLayout
from megatron_vlm.runtime.placement import use_cuda

ROPE_BASE_MODES = ("keep", "explicit", "ntk")
RECOMPUTE_MODES = ("none", "selective", "full")
# selective recompute: Megatron-Core's modules, plus ``act`` (the dense MLP's activation output)
RECOMPUTE_MODULES = ("core_attn", "layernorm", "mlp", "act")


@dataclass
class VisionTransformerConfig(TransformerConfig):
    """``TransformerConfig`` of a vision tower plus the image geometry every family has (families add theirs)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge_size: int = 2
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

    def context_length(self, arch: VLArch) -> int:
        """The model's context length, the longest row it is set up for: ``target_length``, else the
        checkpoint's window (``max_position_embeddings``)."""
        return self.target_length or arch.max_position_embeddings


@dataclass
class VLModelConfig:
    """Everything needed to build a family's model: the two transformer configs and the model-level fields."""

    arch: VLArch
    layout: ParallelLayout
    language: TransformerConfig
    vision: TransformerConfig  # the family's vision config (a TransformerConfig plus its image geometry)
    rotary_base: float
    max_sequence_length: int  # the model's context length (``RopeSettings.context_length``)
    attention_backend: str = "torch"
    transformer_impl: str = "local"
    recompute_activation: bool = False  # selective recompute of the MLPs' activation (module ``act``)

    def block_spec(self, num_layers: int, *, causal: bool, **layer_options):
        """The transformer-block spec of ``num_layers`` language (``causal``) or vision layers (``layer_options``:
        a family's choices, e.g. ``qk_layernorm``)."""
        return block_spec(self.transformer_impl, self.attention_backend, num_layers, causal=causal,
                          recompute_activation=self.recompute_activation, **layer_options)

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

    @property
    def deepstack_layers(self) -> int:
        """Language layers that add DeepStack visual features to their output (0: none)."""
        return self.arch.deepstack_layers

    def to_hf_config(self) -> dict[str, Any]:
        """The source ``config.json`` with the RoPE base and length actually used (what a checkpoint records)."""
        longest = max(self.max_sequence_length, self.arch.max_position_embeddings)
        return rewrite_hf_config(self.arch.raw, rope_theta=self.rotary_base, max_position_embeddings=longest)


# Transformer Engine's first release whose context parallelism takes packed (THD) rows, per cp_comm_type
# (TE's attention/dot_product_attention/context_parallel.py: p2p since 1.10, a2a since 2.11, all_gather 2.18)
TE_THD_CP_MIN_VERSION = {"p2p": "1.10", "a2a": "2.11", "all_gather": "2.18"}


def backend_problems(transformer_impl: str, attention_backend: str, layout: ParallelLayout, *, fp8: bool,
                     recompute: str = "none", recompute_modules=("core_attn",), arch: VLArch | None = None,
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


def activation(name: str):
    table = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
    if name not in table:
        raise ConfigError(f"config.json: unsupported hidden_act {name!r}")
    return table[name]


def transformer_kwargs(layout: ParallelLayout, *, params_dtype: torch.dtype = torch.float32, recompute: str = "none",
                       recompute_modules: tuple[str, ...] | list[str] = ("core_attn",),
                       use_cpu_initialization: bool | None = None) -> dict[str, Any]:
    """The ``TransformerConfig`` keywords both towers of every family share (everything but shapes and layer choices).

    ``recompute``: ``none``, ``selective`` (the ``recompute_modules``: ``core_attn``, ``layernorm``, ``mlp``,
    ``act``) or ``full`` (every layer, uniform).
    """
    if use_cpu_initialization is None:  # weights where this process computes (runtime.placement)
        use_cpu_initialization = not use_cuda()
    granularity = None if recompute == "none" else recompute
    common = dict(
        normalization="RMSNorm",
        gated_linear_unit=True,
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
    return common


def language_kwargs(arch: VLArch, layout: ParallelLayout, common: dict[str, Any],
                    attention_backend: str = "torch") -> dict[str, Any]:
    """The language model's ``TransformerConfig`` keywords every family shares: shapes, mRoPE, the split."""
    return dict(
        common,
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        ffn_hidden_size=arch.ffn_hidden_size,
        layernorm_epsilon=arch.rms_norm_eps,
        activation_func=activation(arch.hidden_act),
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


def vision_kwargs(arch: VLArch, common: dict[str, Any]) -> dict[str, Any]:
    """The vision tower's :class:`VisionTransformerConfig` keywords every family shares: shapes and geometry
    (no SP, CP or PP)."""
    return dict(
        common,
        num_layers=arch.vision_layers,
        hidden_size=arch.vision_hidden_size,
        num_attention_heads=arch.vision_heads,
        num_query_groups=arch.vision_heads,
        kv_channels=arch.vision_head_dim,
        ffn_hidden_size=arch.vision_ffn_hidden_size,
        layernorm_epsilon=1e-6,
        activation_func=activation(arch.vision_hidden_act),
        add_bias_linear=True,
        add_qkv_bias=True,
        patch_size=arch.patch_size,
        temporal_patch_size=arch.temporal_patch_size,
        in_channels=arch.in_channels,
        spatial_merge_size=arch.spatial_merge_size,
        out_hidden_size=arch.out_hidden_size,
        vision_rope_theta=arch.vision_rope_theta,
    )


def build_model_config(
    arch: VLArch,
    vision: Callable[[dict[str, Any]], TransformerConfig],
    language_fields: dict[str, Any],
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
) -> VLModelConfig:
    """A family's model config: ``vision(common keywords)`` builds its vision config, ``language_fields`` are
    its language-layer choices (e.g. QKV bias, q/k norm); ``language_overrides`` extra ``TransformerConfig``
    fields of the language model. Checks the layout against the shapes first (``ParallelLayout.check_model``).

    ``transformer_impl``: the layers' linears and norms (``local`` or ``te``); ``attention_backend``: their
    core attention (``torch`` or ``te``); see :mod:`megatron_vlm.models.specs`. ``recompute``: ``none``,
    ``selective`` (the ``recompute_modules``: ``core_attn``, ``layernorm``, ``mlp``, ``act``) or ``full``
    (every layer, uniform).
    """
    for key, value, choices in (("attention backend", attention_backend, ATTENTION_BACKENDS),
                                ("transformer_impl", transformer_impl, TRANSFORMER_IMPLS),
                                ("recompute mode", recompute, RECOMPUTE_MODES)):
        if value not in choices:
            raise ConfigError(f"unknown {key} {value!r}; choose one of {choices}")
    unknown = sorted(set(recompute_modules) - set(RECOMPUTE_MODULES))
    if unknown:
        raise ConfigError(f"unknown recompute module(s) {unknown}; choose from {RECOMPUTE_MODULES}")
    layout = layout or ParallelLayout()
    rope = rope or RopeSettings()
    layout.check_model(arch.num_layers, arch.num_heads, arch.num_query_groups, arch.vision_heads)
    base = rope.resolve(arch.rope_theta, arch.head_dim)
    common = transformer_kwargs(layout, params_dtype=params_dtype, recompute=recompute,
                                recompute_modules=recompute_modules, use_cpu_initialization=use_cpu_initialization)
    language = TransformerConfig(**{**language_kwargs(arch, layout, common, attention_backend), **language_fields,
                                    **language_overrides})
    return VLModelConfig(
        arch=arch,
        layout=layout,
        language=language,
        vision=vision(common),
        rotary_base=base,
        max_sequence_length=rope.context_length(arch),
        attention_backend=attention_backend,
        transformer_impl=transformer_impl,
        recompute_activation=recompute == "selective" and "act" in recompute_modules,
    )


__all__ = [
    "ATTENTION_BACKENDS", "RECOMPUTE_MODULES", "TRANSFORMER_IMPLS", "RopeSettings", "VLModelConfig",
    "VisionTransformerConfig", "backend_problems", "build_model_config", "language_kwargs", "ntk_rope_base",
    "transformer_kwargs", "vision_kwargs",
]
