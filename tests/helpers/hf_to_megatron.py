"""Test-only: copy a transformers Qwen2.5-VL's or Qwen3-VL's weights into a TP=1, PP=1 Megatron model of its family.

Written independently of ``checkpoint_tools`` (owned by the conversion stage) so the parity
tests check the model, not the converter. Names follow docs/checkpoints.md.
"""

from __future__ import annotations

import torch


def _per_group_qkv(q, k, v, groups: int) -> torch.Tensor:
    """Megatron's fused QKV: for each query group ``[q_g; k_g; v_g]`` along dim 0."""
    qs = q.reshape(groups, -1, *q.shape[1:])
    ks = k.reshape(groups, -1, *k.shape[1:])
    vs = v.reshape(groups, -1, *v.shape[1:])
    return torch.cat([qs, ks, vs], dim=1).reshape(-1, *q.shape[1:])


def megatron_state_dict(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """HF in-memory state dict (or grads by name) -> the family model's in-memory names (local spec)."""
    return {"qwen2_5_vl": _qwen25vl, "qwen3_vl": _qwen3vl}[config.arch.model_type](sd, config)


def _qwen25vl(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    lm, vis = "model.language_model.", "model.visual."
    out = {"language_model.embedding.word_embeddings.weight": sd[lm + "embed_tokens.weight"],
           "language_model.decoder.final_layernorm.weight": sd[lm + "norm.weight"]}
    if not config.tie_word_embeddings:
        out["language_model.output_layer.weight"] = sd["lm_head.weight"]
    groups = config.language.num_query_groups
    for i in range(config.language.num_layers):
        h, m = f"{lm}layers.{i}.", f"language_model.decoder.layers.{i}."
        a = h + "self_attn."
        out[m + "input_layernorm.weight"] = sd[h + "input_layernorm.weight"]
        for kind in ("weight", "bias"):
            out[m + f"self_attention.linear_qkv.{kind}"] = _per_group_qkv(
                sd[a + f"q_proj.{kind}"], sd[a + f"k_proj.{kind}"], sd[a + f"v_proj.{kind}"], groups)
        out[m + "self_attention.linear_proj.weight"] = sd[a + "o_proj.weight"]
        out[m + "pre_mlp_layernorm.weight"] = sd[h + "post_attention_layernorm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = sd[h + "mlp.down_proj.weight"]
    heads = config.vision.num_attention_heads
    out["vision_model.patch_embed.proj.weight"] = sd[vis + "patch_embed.proj.weight"]
    for i in range(config.vision.num_layers):
        h, m = f"{vis}blocks.{i}.", f"vision_model.decoder.layers.{i}."
        out[m + "input_layernorm.weight"] = sd[h + "norm1.weight"]
        out[m + "pre_mlp_layernorm.weight"] = sd[h + "norm2.weight"]
        for kind in ("weight", "bias"):
            q, k, v = sd[h + f"attn.qkv.{kind}"].chunk(3)
            out[m + f"self_attention.linear_qkv.{kind}"] = _per_group_qkv(q, k, v, heads)
            out[m + f"self_attention.linear_proj.{kind}"] = sd[h + f"attn.proj.{kind}"]
            out[m + f"mlp.linear_fc1.{kind}"] = torch.cat([sd[h + f"mlp.gate_proj.{kind}"], sd[h + f"mlp.up_proj.{kind}"]])
            out[m + f"mlp.linear_fc2.{kind}"] = sd[h + f"mlp.down_proj.{kind}"]
    out["vision_model.merger.layer_norm.weight"] = sd[vis + "merger.ln_q.weight"]
    for hf_i, name in (("0", "linear_fc1"), ("2", "linear_fc2")):
        for kind in ("weight", "bias"):
            out[f"vision_model.merger.{name}.{kind}"] = sd[f"{vis}merger.mlp.{hf_i}.{kind}"]
    return out


def _qwen3vl(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    lm, vis = "model.language_model.", "model.visual."
    out = {"language_model.embedding.word_embeddings.weight": sd[lm + "embed_tokens.weight"],
           "language_model.decoder.final_layernorm.weight": sd[lm + "norm.weight"]}
    if not config.tie_word_embeddings:
        out["language_model.output_layer.weight"] = sd["lm_head.weight"]
    groups = config.language.num_query_groups
    for i in range(config.language.num_layers):
        h, m = f"{lm}layers.{i}.", f"language_model.decoder.layers.{i}."
        a = h + "self_attn."
        out[m + "input_layernorm.weight"] = sd[h + "input_layernorm.weight"]
        out[m + "self_attention.linear_qkv.weight"] = _per_group_qkv(
            sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"], groups)
        out[m + "self_attention.q_layernorm.weight"] = sd[a + "q_norm.weight"]
        out[m + "self_attention.k_layernorm.weight"] = sd[a + "k_norm.weight"]
        out[m + "self_attention.linear_proj.weight"] = sd[a + "o_proj.weight"]
        out[m + "pre_mlp_layernorm.weight"] = sd[h + "post_attention_layernorm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = sd[h + "mlp.down_proj.weight"]
    heads = config.vision.num_attention_heads
    for kind in ("weight", "bias"):
        out[f"vision_model.patch_embed.proj.{kind}"] = sd[vis + f"patch_embed.proj.{kind}"]
    out["vision_model.pos_embed.weight"] = sd[vis + "pos_embed.weight"]
    for i in range(config.vision.num_layers):
        h, m = f"{vis}blocks.{i}.", f"vision_model.decoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[m + f"input_layernorm.{kind}"] = sd[h + f"norm1.{kind}"]
            out[m + f"pre_mlp_layernorm.{kind}"] = sd[h + f"norm2.{kind}"]
            q, k, v = sd[h + f"attn.qkv.{kind}"].chunk(3)
            out[m + f"self_attention.linear_qkv.{kind}"] = _per_group_qkv(q, k, v, heads)
            out[m + f"self_attention.linear_proj.{kind}"] = sd[h + f"attn.proj.{kind}"]
            out[m + f"mlp.linear_fc1.{kind}"] = sd[h + f"mlp.linear_fc1.{kind}"]
            out[m + f"mlp.linear_fc2.{kind}"] = sd[h + f"mlp.linear_fc2.{kind}"]
    mergers = [("vision_model.merger.", vis + "merger.")]
    mergers += [(f"vision_model.deepstack_mergers.{k}.", f"{vis}deepstack_merger_list.{k}.")
                for k in range(len(config.vision.deepstack_visual_indexes))]
    for m, h in mergers:
        for kind in ("weight", "bias"):
            out[m + f"layer_norm.{kind}"] = sd[h + f"norm.{kind}"]
            out[m + f"linear_fc1.{kind}"] = sd[h + f"linear_fc1.{kind}"]
            out[m + f"linear_fc2.{kind}"] = sd[h + f"linear_fc2.{kind}"]
    return out


def load_hf_weights(model, hf_model, config) -> None:
    """Copy the weights; every parameter of ``model`` must be covered."""
    state = megatron_state_dict(hf_model.state_dict(), config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise KeyError(f"missing {missing}, unexpected {unexpected}")
