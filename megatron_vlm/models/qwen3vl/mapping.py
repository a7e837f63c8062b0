"""Qwen3-VL's HF <-> Megatron rule table (the machinery: ``megatron_vlm.models.mapping``; docs/checkpoints.md).

Qwen3-VL's checkpoints use transformers' in-memory names on disk (``model.language_model.*``,
``model.visual.*``). Differences from Qwen2.5-VL: q/k RMSNorm and no QKV bias in the language model;
LayerNorm (weight and bias) and a plain GELU MLP in the vision tower, a patch-embedding bias, the
learned position table, and one merger per DeepStack tap.
"""

from __future__ import annotations

from functools import partial

from megatron_vlm.models.mapping import GATED, LM_QKV, VISION_QKV, VOCAB, Part, Rule, layer_rule

_lm_layer = partial(layer_rule, "language_model.decoder.layers", "model.language_model.layers")
_vision_layer = partial(layer_rule, "vision_model.decoder.layers", "model.visual.blocks")
_deepstack = partial(layer_rule, "vision_model.deepstack_mergers", "model.visual.deepstack_merger_list")


# A patch merger, Megatron name -> HF name (and TP dim): norm (weight, bias), column-parallel fc1, row-parallel fc2.
_MERGER = (("layer_norm.weight", "norm.weight", None), ("layer_norm.bias", "norm.bias", None),
           ("linear_fc1.weight", "linear_fc1.weight", 0), ("linear_fc1.bias", "linear_fc1.bias", 0),
           ("linear_fc2.weight", "linear_fc2.weight", 1), ("linear_fc2.bias", "linear_fc2.bias", None))


LANGUAGE_MODEL_RULES: tuple[Rule, ...] = (
    Rule("language_model.embedding.word_embeddings.weight", ("model.language_model.embed_tokens.weight",), VOCAB, 0),
    _lm_layer("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"),
    _lm_layer("self_attention.linear_qkv.weight", tuple(f"self_attn.{p}_proj.weight" for p in "qkv"), LM_QKV, 0),
    _lm_layer("self_attention.q_layernorm.weight", "self_attn.q_norm.weight"),
    _lm_layer("self_attention.k_layernorm.weight", "self_attn.k_norm.weight"),
    _lm_layer("self_attention.linear_proj.weight", "self_attn.o_proj.weight", tp_dim=1),
    _lm_layer("mlp.linear_fc1.layer_norm_weight", "post_attention_layernorm.weight"),
    _lm_layer("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), GATED, 0),
    _lm_layer("mlp.linear_fc2.weight", "mlp.down_proj.weight", tp_dim=1),
    Rule("language_model.decoder.final_layernorm.weight", ("model.language_model.norm.weight",)),
    Rule("language_model.output_layer.weight", ("lm_head.weight",), VOCAB, 0, untied_only=True),
)

VISION_TOWER_RULES: tuple[Rule, ...] = (
    Rule("vision_model.patch_embed.proj.weight", ("model.visual.patch_embed.proj.weight",)),
    Rule("vision_model.patch_embed.proj.bias", ("model.visual.patch_embed.proj.bias",)),
    Rule("vision_model.pos_embed.weight", ("model.visual.pos_embed.weight",)),
    _vision_layer("self_attention.linear_qkv.layer_norm_weight", "norm1.weight"),
    _vision_layer("self_attention.linear_qkv.layer_norm_bias", "norm1.bias"),
    _vision_layer("self_attention.linear_qkv.weight", "attn.qkv.weight", VISION_QKV, 0),
    _vision_layer("self_attention.linear_qkv.bias", "attn.qkv.bias", VISION_QKV, 0),
    _vision_layer("self_attention.linear_proj.weight", "attn.proj.weight", tp_dim=1),
    _vision_layer("self_attention.linear_proj.bias", "attn.proj.bias"),
    _vision_layer("mlp.linear_fc1.layer_norm_weight", "norm2.weight"),
    _vision_layer("mlp.linear_fc1.layer_norm_bias", "norm2.bias"),
    _vision_layer("mlp.linear_fc1.weight", "mlp.linear_fc1.weight", tp_dim=0),
    _vision_layer("mlp.linear_fc1.bias", "mlp.linear_fc1.bias", tp_dim=0),
    _vision_layer("mlp.linear_fc2.weight", "mlp.linear_fc2.weight", tp_dim=1),
    _vision_layer("mlp.linear_fc2.bias", "mlp.linear_fc2.bias"),
)

MERGER_RULES: tuple[Rule, ...] = tuple(
    Rule(f"vision_model.merger.{m}", (f"model.visual.merger.{h}",), tp_dim=tp) for m, h, tp in _MERGER)
DEEPSTACK_RULES: tuple[Rule, ...] = tuple(_deepstack(m, h, tp_dim=tp) for m, h, tp in _MERGER)

PARTS: tuple[Part, ...] = (
    Part("language model", LANGUAGE_MODEL_RULES, "lm_layers"),
    Part("vision tower", VISION_TOWER_RULES, "vision_layers"),
    Part("merger", MERGER_RULES),
    Part("DeepStack mergers", DEEPSTACK_RULES, "deepstack_layers"),
)
