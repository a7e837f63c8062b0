"""Test-only: copy a transformers Qwen2.5-VL's weights into a TP=1, PP=1 ``Qwen25VLModel``.

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
    """HF in-memory state dict (or grads by name) -> ``Qwen25VLModel``'s in-memory names (local spec)."""
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


def load_hf_weights(model, hf_model, config) -> None:
    """Copy the weights; every parameter of ``model`` must be covered."""
    state = megatron_state_dict(hf_model.state_dict(), config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise KeyError(f"missing {missing}, unexpected {unexpected}")
