"""Layer specs: linear layers and core attention are separate choices.

``transformer_impl`` picks the layer's linears and norms: ``local`` is Megatron-Core's
``get_gpt_layer_local_spec`` (Column/RowParallelLinear, this package's lean RMSNorm that works with
sequence parallelism), ``te`` is ``get_gpt_layer_with_transformer_engine_spec`` (norms fused into
Transformer Engine's linears; FP8 GEMMs). ``attention_backend`` picks the core attention inside
either: ``torch`` (:class:`TorchDotProductAttention`, SDPA per segment) or ``te``
(:class:`TESegmentedDotProductAttention`, TE's fused attention over THD segments). Both impls give
the same checkpoint keys (the local spec's ``sharded_state_dict_keys_map``). Vision layers differ
only in being non-causal; a family may add q/k norms (``qk_layernorm``).
"""

from __future__ import annotations

from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_vlm.models.attention import TorchDotProductAttention
from megatron_vlm.models.norm import RMSNorm
from megatron_vlm.runtime.transformer_engine import transformer_engine_error

TRANSFORMER_IMPLS = ("local", "te")
ATTENTION_BACKENDS = ("torch", "te")


def require_transformer_engine(what: str) -> None:
    """Raise a clear error unless CUDA and Transformer Engine are both usable (``what`` needs them)."""
    problem = transformer_engine_error()
    if problem:
        raise RuntimeError(f"{what} needs a CUDA GPU and Transformer Engine ({problem}); install it with "
                           "`pip install -e .[gpu]`, or use model.transformer_impl=local and "
                           "model.attention_backend=torch")


class ActivationRecomputeMLP(MLP):
    """Megatron's MLP whose activation output (the input of ``linear_fc2``) is not kept for backward but
    recomputed from ``linear_fc1``'s output (``CheckpointWithoutOutput``, as Megatron's ``moe_act``
    recompute does for experts): the dense layer's ``act`` recompute module."""

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if per_token_scale is not None or not self.training:
            return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
        fc1, bias = self.linear_fc1(hidden_states)
        checkpoint = tensor_parallel.CheckpointWithoutOutput(fp8=self.config.fp8)
        act = checkpoint.checkpoint(self._activation, fc1, bias)
        output, output_bias = self.linear_fc2(act)
        checkpoint.discard_output_and_register_recompute(output)
        return output, output_bias

    def _activation(self, fc1, bias):
        import torch.nn.functional as F
        from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl

        cfg = self.config
        if cfg.gated_linear_unit and cfg.activation_func is F.silu:
            return bias_swiglu_impl(fc1, bias, cfg.activation_func_fp8_input_store, False)
        x = fc1 if bias is None else fc1 + bias
        if cfg.gated_linear_unit:
            gate, up = x.chunk(2, dim=-1)
            return cfg.activation_func(gate) * up
        return cfg.activation_func(x)


def layer_spec(transformer_impl: str, attention_backend: str, *, causal: bool, qk_layernorm: bool = False,
               recompute_activation: bool = False) -> ModuleSpec:
    """The transformer-layer spec of a language model (``causal=True``) or vision tower (``False``)."""
    if transformer_impl not in TRANSFORMER_IMPLS:
        raise ValueError(f"unknown transformer_impl {transformer_impl!r}; choose one of {TRANSFORMER_IMPLS}")
    if attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {attention_backend!r}; choose one of {ATTENTION_BACKENDS}")
    if transformer_impl == "te":
        require_transformer_engine("model.transformer_impl=te")
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    else:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=qk_layernorm)
        spec.submodules.input_layernorm = RMSNorm
        spec.submodules.pre_mlp_layernorm = RMSNorm
        if qk_layernorm:
            spec.submodules.self_attention.submodules.q_layernorm = RMSNorm
            spec.submodules.self_attention.submodules.k_layernorm = RMSNorm
    if attention_backend == "te":
        require_transformer_engine("model.attention_backend=te")
        from megatron_vlm.models.te_attention import TESegmentedDotProductAttention

        core_attention = TESegmentedDotProductAttention
    else:
        core_attention = TorchDotProductAttention
    attn = spec.submodules.self_attention
    attn.params = {**attn.params, "attn_mask_type": AttnMaskType.causal if causal else AttnMaskType.no_mask}
    attn.submodules.core_attention = core_attention
    if recompute_activation:
        spec.submodules.mlp.module = ActivationRecomputeMLP
    return spec


def norm_module(transformer_impl: str) -> type:
    """The RMSNorm module class of ``transformer_impl`` (vision merger, final norms)."""
    if transformer_impl == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return RMSNorm


def block_spec(transformer_impl: str, attention_backend: str, num_layers: int, *, causal: bool,
               **layer_options) -> TransformerBlockSubmodules:
    """``num_layers`` layers of :func:`layer_spec` and the impl's final RMSNorm."""
    return TransformerBlockSubmodules(
        layer_specs=[layer_spec(transformer_impl, attention_backend, causal=causal, **layer_options)] * num_layers,
        layer_norm=norm_module(transformer_impl))
