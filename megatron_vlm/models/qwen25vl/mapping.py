"""Qwen2.5-VL's HF <-> Megatron rule table (the machinery: ``megatron_vlm.models.mapping``; docs/checkpoints.md)."""

from __future__ import annotations

from functools import partial

from megatron_vlm.models.mapping import GATED, LM_QKV, VISION_QKV, VOCAB, Part, Rule, layer_rule

_lm_layer = partial(layer_rule, "language_model.decoder.layers", "model.layers")
_vision_layer = partial(layer_rule, "vision_model.decoder.layers", "visual.blocks")


def _qkv(suffix: str) -> tuple[str, ...]:
    return tuple(f"self_attn.{p}_proj.{suffix}" for p in "qkv")


def _gate_up(suffix: str) -> tuple[str, ...]:
    return (f"mlp.gate_proj.{suffix}", f"mlp.up_proj.{suffix}")


LANGUAGE_MODEL_RULES: tuple[Rule, ...] = (
    Rule("language_model.embedding.word_embeddings.weight", ("model.embed_tokens.weight",), VOCAB, 0),
    _lm_layer("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"),
    _lm_layer("self_attention.linear_qkv.weight", _qkv("weight"), LM_QKV, 0),
    _lm_layer("self_attention.linear_qkv.bias", _qkv("bias"), LM_QKV, 0),
    _lm_layer("self_attention.linear_proj.weight", "self_attn.o_proj.weight", tp_dim=1),
    _lm_layer("mlp.linear_fc1.layer_norm_weight", "post_attention_layernorm.weight"),
    _lm_layer("mlp.linear_fc1.weight", _gate_up("weight"), GATED, 0),
    _lm_layer("mlp.linear_fc2.weight", "mlp.down_proj.weight", tp_dim=1),
    Rule("language_model.decoder.final_layernorm.weight", ("model.norm.weight",)),
    Rule("language_model.output_layer.weight", ("lm_head.weight",), VOCAB, 0, untied_only=True),
)

VISION_TOWER_RULES: tuple[Rule, ...] = (
    Rule("vision_model.patch_embed.proj.weight", ("visual.patch_embed.proj.weight",)),
    _vision_layer("self_attention.linear_qkv.layer_norm_weight", "norm1.weight"),
    _vision_layer("self_attention.linear_qkv.weight", "attn.qkv.weight", VISION_QKV, 0),
    _vision_layer("self_attention.linear_qkv.bias", "attn.qkv.bias", VISION_QKV, 0),
    _vision_layer("self_attention.linear_proj.weight", "attn.proj.weight", tp_dim=1),
    _vision_layer("self_attention.linear_proj.bias", "attn.proj.bias"),
    _vision_layer("mlp.linear_fc1.layer_norm_weight", "norm2.weight"),
    _vision_layer("mlp.linear_fc1.weight", _gate_up("weight"), GATED, 0),
    _vision_layer("mlp.linear_fc1.bias", _gate_up("bias"), GATED, 0),
    _vision_layer("mlp.linear_fc2.weight", "mlp.down_proj.weight", tp_dim=1),
    _vision_layer("mlp.linear_fc2.bias", "mlp.down_proj.bias"),
)

MERGER_RULES: tuple[Rule, ...] = (
    Rule("vision_model.merger.layer_norm.weight", ("visual.merger.ln_q.weight",)),
    Rule("vision_model.merger.linear_fc1.weight", ("visual.merger.mlp.0.weight",), tp_dim=0),
    Rule("vision_model.merger.linear_fc1.bias", ("visual.merger.mlp.0.bias",), tp_dim=0),
    Rule("vision_model.merger.linear_fc2.weight", ("visual.merger.mlp.2.weight",), tp_dim=1),
    Rule("vision_model.merger.linear_fc2.bias", ("visual.merger.mlp.2.bias",)),
)

PARTS: tuple[Part, ...] = (
    Part("language model", LANGUAGE_MODEL_RULES, "lm_layers"),
    Part("vision tower", VISION_TOWER_RULES, "vision_layers"),
    Part("merger", MERGER_RULES),
)
