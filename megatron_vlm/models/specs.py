"""Layer specs of Qwen2.5-VL for the two attention backends (``torch`` and ``te``).

Both start from Megatron-Core's own GPT layer specs, so module structure and parameter names are
Megatron's: the ``torch`` spec is ``get_gpt_layer_local_spec`` (RMSNorm, Column/RowParallelLinear)
with its ``core_attention`` replaced by :class:`TorchDotProductAttention` and an RMSNorm that
works with sequence parallelism; the ``te`` spec is
``get_gpt_layer_with_transformer_engine_spec`` (fused layer-norm linears; the local spec's
``sharded_state_dict_keys_map`` gives the same checkpoint keys). Vision layers differ only in
being non-causal.
"""

from __future__ import annotations

from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_vlm.models.attention import TorchDotProductAttention
from megatron_vlm.models.norm import RMSNorm
from megatron_vlm.utils.transformer_engine import transformer_engine_error


def require_transformer_engine() -> None:
    """Raise a clear error unless CUDA and Transformer Engine are both usable."""
    problem = transformer_engine_error()
    if problem:
        raise RuntimeError(f"attention backend 'te' needs a CUDA GPU and Transformer Engine ({problem}); "
                           "install it with `pip install -e .[gpu]` or use attention_backend='torch'")


def _set_attention(spec: ModuleSpec, core_attention: type, mask_type: AttnMaskType) -> ModuleSpec:
    attn = spec.submodules.self_attention
    attn.params = {**attn.params, "attn_mask_type": mask_type}
    attn.submodules.core_attention = core_attention
    return spec


def layer_spec(backend: str, *, causal: bool) -> ModuleSpec:
    """The transformer-layer spec of the language model (``causal=True``) or vision tower (``False``)."""
    mask_type = AttnMaskType.causal if causal else AttnMaskType.no_mask
    if backend == "torch":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        spec.submodules.input_layernorm = RMSNorm
        spec.submodules.pre_mlp_layernorm = RMSNorm
        return _set_attention(spec, TorchDotProductAttention, mask_type)
    if backend == "te":
        require_transformer_engine()
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        from megatron_vlm.models.te_attention import TESegmentedDotProductAttention

        return _set_attention(get_gpt_layer_with_transformer_engine_spec(), TESegmentedDotProductAttention, mask_type)
    raise ValueError(f"unknown attention backend {backend!r}; choose 'torch' or 'te'")


def norm_module(backend: str) -> type:
    """The RMSNorm module class of ``backend`` (vision merger, final norms)."""
    if backend == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return RMSNorm


def block_spec(backend: str, num_layers: int, *, causal: bool) -> TransformerBlockSubmodules:
    """``num_layers`` layers of :func:`layer_spec` and the backend's final RMSNorm."""
    return TransformerBlockSubmodules(layer_specs=[layer_spec(backend, causal=causal)] * num_layers,
                                      layer_norm=norm_module(backend))
