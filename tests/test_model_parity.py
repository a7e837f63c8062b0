"""Each family's Megatron model vs its transformers model (Qwen2_5_VL / Qwen3VL ForConditionalGeneration):
same weights, same logits and gradients (fp32 CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.hf_to_megatron import load_hf_weights, megatron_state_dict
from helpers.vlm_inputs import IMAGE_PAD, hf_logits, make_row, randomize_weights_

TOL = 1e-5  # relative: max|x - ref| / max|ref|

CONFIGS = {  # name -> (family, tiny config overrides)
    # Qwen2.5-VL tiny defaults: mrope (2,3,3), 4 heads / 2 KV groups, full attention in vision layers 1 and 3
    "base": ("qwen2_5_vl", dict()),
    # GQA 4:1, other mrope split, one full-attention layer first, 2x2-unit windows, 3 LM layers
    "gqa4": ("qwen2_5_vl", dict(num_kv_heads=1, mrope_section=(4, 2, 2), vision_depth=3, fullatt_block_indexes=(0,),
                                window_size=56, num_layers=3)),
    # no GQA, head_dim 16 with 6 heads, wide windows, tied embeddings, 4 vision heads
    "mha_tied": ("qwen2_5_vl", dict(hidden_size=96, num_heads=6, num_kv_heads=6, mrope_section=(2, 2, 4),
                                    intermediate_size=160, vision_hidden_size=64, vision_heads=4,
                                    vision_intermediate_size=96, fullatt_block_indexes=(2,), window_size=224,
                                    tie_word_embeddings=True)),
    # Qwen3-VL tiny defaults: interleaved mrope (2,3,3), GQA 2:1, q/k norm, 4x4 learned vision positions,
    # DeepStack from vision layers 0 and 2 into language layers 0 and 1
    "q3_base": ("qwen3_vl", dict()),
    # tied embeddings, MHA with 6 heads, other mrope split, a 3x3 position grid (interpolated up and down),
    # one DeepStack tap from the last of 3 vision layers, 3 language layers
    "q3_mha_tied": ("qwen3_vl", dict(hidden_size=96, num_heads=6, num_kv_heads=6, mrope_section=(2, 2, 4),
                                     intermediate_size=160, vision_depth=3, vision_hidden_size=64, vision_heads=4,
                                     vision_intermediate_size=96, num_position_embeddings=9,
                                     deepstack_visual_indexes=(2,), num_layers=3, tie_word_embeddings=True)),
}


def _pair(name: str, seed: int = 0):
    from megatron_vlm.models.registry import get_family

    family, overrides = CONFIGS[name]
    family = get_family(family)
    hf_config = family.tiny_config(**overrides)
    hf = family.hf_model_class()(hf_config).eval()
    randomize_weights_(hf, seed)
    if hf_config.tie_word_embeddings:
        hf.tie_weights()
    config = family.config_from_hf(hf_config.to_dict())
    model = family.model_class(config).eval()
    load_hf_weights(model, hf, config)
    return hf, model


def _row(model, parts, seed):
    """``make_row`` with the model's patch size."""
    return make_row(parts, seed=seed, patch_dim=model.model_config.arch.family.geometry.patch_dim)


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, megatron_single):
    return _pair(request.param)


def _assert_close(out, ref):
    assert out.shape == ref.shape
    assert ref.abs().max() > 1.0  # weights are scaled so that logits are O(1)
    diff = ((out - ref).abs().max() / ref.abs().max()).item()
    assert diff <= TOL, f"max abs diff {diff} relative to max |logit|"


def test_text_only(pair):
    hf, model = pair
    ids = torch.stack([make_row([40], seed=s)[0] for s in (1, 2)])
    ref = hf_logits(hf, ids)
    with torch.no_grad():
        out = model(ids)  # the model computes the (text-only) mRoPE positions itself
    _assert_close(out, ref)


def test_one_image(pair):
    hf, model = pair
    ids, grids, pixels = _row(model, [6, (1, 8, 12), 9], seed=3)
    ref = hf_logits(hf, ids[None], grids, pixels)
    with torch.no_grad():
        out = model(ids[None], pixel_values=pixels, image_grid_thw=grids)
    _assert_close(out, ref)


def test_interleaved_images_of_different_shapes(pair):
    """Wide, tall, window-unaligned and tiny images between text: windows, positions and scatter order."""
    hf, model = pair
    parts = [5, (1, 4, 20), 7, (1, 16, 8), 3, (1, 10, 14), (1, 2, 2), 11]
    ids, grids, pixels = _row(model, parts, seed=4)
    ref = hf_logits(hf, ids[None], grids, pixels)
    with torch.no_grad():
        out = model(ids[None], pixel_values=pixels, image_grid_thw=grids)
    _assert_close(out, ref)


def test_packed_row_equals_each_sample_alone(pair):
    hf, model = pair
    a = _row(model, [4, (1, 8, 8), 6], seed=5)
    b = _row(model, [3, (1, 6, 10), 2, (1, 4, 4), 5], seed=6)
    ids = torch.cat([a[0], b[0]])[None]
    grids, pixels = torch.cat([a[1], b[1]]), torch.cat([a[2], b[2]])
    cu = torch.tensor([0, len(a[0]), len(a[0]) + len(b[0])])
    with torch.no_grad():
        packed = model(ids, pixel_values=pixels, image_grid_thw=grids, cu_seqlens=cu)
    ref = torch.cat([hf_logits(hf, s[0][None], s[1], s[2]) for s in (a, b)], dim=1)
    _assert_close(packed, ref)


@pytest.mark.parametrize("name", ["base", "q3_base"])
def test_batch_of_two_rows_with_images(megatron_single, name):
    """Images of row 1 follow those of row 0 in ``image_grid_thw``; positions are computed per row."""
    hf, model = _pair(name, seed=7)
    a = _row(model, [4, (1, 8, 8), 6], seed=8)
    b = _row(model, [2, (1, 4, 12), 12], seed=9)
    assert len(a[0]) == len(b[0])
    ids = torch.stack([a[0], b[0]])
    with torch.no_grad():
        out = model(ids, pixel_values=torch.cat([a[2], b[2]]), image_grid_thw=torch.cat([a[1], b[1]]))
    ref = torch.cat([hf_logits(hf, s[0][None], s[1], s[2]) for s in (a, b)])
    _assert_close(out, ref)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_match_transformers(megatron_single, name):
    """Backward too, in each config (GQA 2:1, GQA 4:1, MHA with tied embeddings; DeepStack, q/k norm): every
    parameter's gradient of the summed token loss, mapped to Megatron names, within 1e-5 of its largest entry."""
    import torch.nn.functional as F

    hf, model = _pair(name, seed=13)
    ids, grids, pixels = _row(model, [5, (1, 8, 12), 4, (1, 4, 6), 6], seed=14)
    labels = torch.randint(0, 1000, ids.shape, generator=torch.Generator().manual_seed(15))
    logits = hf(input_ids=ids[None], pixel_values=pixels, image_grid_thw=grids,
                mm_token_type_ids=(ids[None] == IMAGE_PAD).int()).logits
    F.cross_entropy(logits[0], labels, reduction="sum").backward()
    model(ids[None], pixel_values=pixels, image_grid_thw=grids, labels=labels[None]).sum().backward()
    hf_grads = megatron_state_dict({n: p.grad for n, p in hf.named_parameters()}, model.model_config)
    assert hf_grads.keys() == dict(model.named_parameters()).keys()
    for param, p in model.named_parameters():
        scale = hf_grads[param].abs().max().item()
        assert scale > 1e-3, param  # O(1) weights: no gradient hides under the bound
        assert (p.grad - hf_grads[param]).abs().max().item() <= TOL * scale, param


@pytest.mark.parametrize("name", ["gqa4", "mha_tied", "q3_mha_tied"])
def test_loss_mask_runs_the_output_layer_only_on_masked_tokens(megatron_single, name):
    """``loss_mask``: loss == full per-token loss * mask, same gradients, output layer on the masked rows only."""
    _, model = _pair(name, seed=16)
    a, b = _row(model, [4, (1, 8, 8), 6], seed=8), _row(model, [2, (1, 4, 12), 12], seed=9)
    inputs = dict(input_ids=torch.stack([a[0], b[0]]), pixel_values=torch.cat([a[2], b[2]]),
                  image_grid_thw=torch.cat([a[1], b[1]]))
    labels = torch.randint(0, 1000, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(17))
    mask = torch.zeros_like(labels)
    mask[0, 20:24] = 1
    mask[1, 5] = 1
    mask[1, -3:] = 1  # answer tokens after the images: every tower gets gradient
    rows = []
    model.language_model.output_layer.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[:2].numel()))

    def loss_and_grads(loss_mask):
        model.zero_grad(set_to_none=True)
        loss = model(**inputs, labels=labels, loss_mask=loss_mask)
        (loss * mask).sum().backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    full_loss, full_grads = loss_and_grads(None)
    masked_loss, masked_grads = loss_and_grads(mask)
    assert rows == [labels.numel(), int(mask.sum())]
    assert (masked_loss[mask == 0] == 0).all() and (masked_loss[mask == 1] > 0).all()
    assert (masked_loss - full_loss * mask).abs().max().item() <= 1e-5
    for n, g in full_grads.items():
        assert g.abs().max() > 0, n
        assert (masked_grads[n] - g).abs().max().item() <= 1e-5 * max(1.0, g.abs().max().item()), n
    empty, _ = loss_and_grads(torch.zeros_like(mask))  # a rank whose tokens carry no loss
    assert rows[-1] == 0 and (empty == 0).all()


def test_image_changes_the_logits(megatron_single):
    """Guard against a vacuous parity: the image pixels must matter to the text after them."""
    _, model = _pair("base", seed=10)
    ids, grids, pixels = _row(model, [3, (1, 8, 8), 5], seed=11)
    with torch.no_grad():
        a = model(ids[None], pixel_values=pixels, image_grid_thw=grids)
        b = model(ids[None], pixel_values=pixels + 0.5, image_grid_thw=grids)
    assert (a[0, -1] - b[0, -1]).abs().max() > 100 * TOL


def test_image_token_count_mismatch_is_a_clear_error(megatron_single):
    _, model = _pair("base")
    ids, grids, pixels = _row(model, [3, (1, 8, 8), 5], seed=12)
    first_pad = int((ids == IMAGE_PAD).nonzero()[0])
    ids = torch.cat([ids[:first_pad], ids[first_pad + 1:]])  # one <|image_pad|> too few
    with torch.no_grad(), pytest.raises(ValueError, match="image"):
        model(ids[None], pixel_values=pixels, image_grid_thw=grids)


# -- pieces checked against independent references ----------------------------------------------

def test_window_layout_matches_transformers():
    from transformers.vision_utils import get_vision_window_index

    from megatron_vlm.models.qwen25vl.vision import window_layout

    grids = torch.tensor([[1, 4, 20], [1, 16, 8], [1, 10, 14], [2, 8, 8], [1, 2, 2]])
    for window in (56, 112, 224):
        ref_index, ref_cu = get_vision_window_index(grids, spatial_merge_size=2, window_size=window, patch_size=14)
        index, cu = window_layout(grids, 2, window, 14)
        assert torch.equal(index, ref_index)
        assert cu.tolist() == ref_cu.tolist()


def _te_thd_partition(cu_padded: list[int], cp_size: int, rank: int) -> list[int]:
    """Transformer Engine's ``thd_partition_indices_kernel`` restated token by token: for local token
    ``i``, find its sequence in ``cu / cp_size`` and take it from the sequence's first half chunk
    ``rank`` or second half chunk ``2 * cp_size - 1 - rank`` (TE common/fused_attn/context_parallel.cu)."""
    import bisect

    cu_s = [c // cp_size for c in cu_padded]
    out = []
    for token in range(cu_padded[-1] // cp_size):
        seq = bisect.bisect_right(cu_s, token) - 1
        seq_len = cu_s[seq + 1] - cu_s[seq]
        index = token - cu_s[seq]
        offset = rank if index < seq_len // 2 else (cp_size - 1) * 2 - rank
        out.append(index + cu_s[seq] * cp_size + seq_len // 2 * offset)
    return out


def test_cp_split_is_transformer_engines_thd_partition():
    """The per-sample zig-zag split both backends use is TE's THD partition (and Megatron's one-sequence
    split when the stream is one sample); the ranks' parts tile the stream; gather_order inverts them."""
    from megatron_vlm.models.context_parallel import CPSplit

    rng = np.random.default_rng(0)
    for cp_size in (2, 3, 4, 8):
        for _ in range(5):
            lengths = rng.integers(1, 6, size=rng.integers(1, 7)) * 2 * cp_size
            cu = [0, *np.cumsum(lengths).tolist()]
            split = CPSplit.of(cu, cp_size, 0)
            parts = []
            for rank in range(cp_size):
                got = split.rank(rank).indices().tolist()
                assert got == _te_thd_partition(cu, cp_size, rank), (cu, cp_size, rank)
                parts += got
            assert sorted(parts) == list(range(cu[-1]))
            assert torch.equal(torch.tensor(parts)[split.gather_order()], torch.arange(cu[-1]))
    one = CPSplit.of([0, 16], 2, 1).indices().tolist()
    assert one == list(range(4, 12))  # Megatron's get_batch_on_this_cp_rank: chunks 1 and 2 of 4
    with pytest.raises(ValueError, match="multiple of 2 \\* cp = 4"):
        CPSplit.of([0, 8, 14], 2, 0)


def test_segmented_attention_matches_dense_mask():
    """Per-segment SDPA == one SDPA with the dense boolean mask: rows of segments, grouped-query heads
    (K/V not repeated), and the context-parallel query chunks of the per-sample split."""
    import torch.nn.functional as F

    from megatron_vlm.models.attention import attention_plan, segmented_attention
    from megatron_vlm.models.context_parallel import CPSplit

    g = torch.Generator().manual_seed(0)
    b, h, groups, s, d = 2, 6, 2, 24, 8
    q = torch.randn(b, h, s, d, generator=g)
    k, v = (torch.randn(b, groups, s, d, generator=g) for _ in range(2))
    cu = [0, 5, 13, 24, 24 + 9, 24 + 10, 48]  # segments per row; no segment crosses a row

    def dense(q, k, v, seg, causal):
        allowed = seg[:, :, None] == seg[:, None, :]
        if causal:
            pos = torch.arange(seg.shape[1])
            allowed = allowed & (pos[None, :, None] >= pos[None, None, :])
        rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                              attn_mask=allowed[:, None])

    def segment_ids(cu, n):
        seg = torch.zeros(n, dtype=torch.long)
        for i, (lo, hi) in enumerate(zip(cu[:-1], cu[1:])):
            seg[lo:hi] = i
        return seg

    seg = segment_ids(cu, b * s).view(b, s)
    for causal in (False, True):
        ref = dense(q, k, v, seg, causal)
        out = segmented_attention(q, k, v, attention_plan(cu, b, s, s, None, causal), causal=causal)
        assert (out - ref).abs().max() < 1e-5
    for cp_size in (2, 3, 4):
        lengths = [2 * cp_size * n for n in (3, 1, 5, 2)]
        stream = [0, *np.cumsum(lengths).tolist()]
        n = stream[-1]
        qs = torch.randn(1, h, n, d, generator=g)
        ks, vs = (torch.randn(1, groups, n, d, generator=g) for _ in range(2))
        ref = dense(qs, ks, vs, segment_ids(stream, n)[None], True)
        for rank in range(cp_size):
            split = CPSplit.of(stream, cp_size, rank)
            idx = torch.tensor(_te_thd_partition(stream, cp_size, rank))
            plan = attention_plan(stream, 1, len(idx), n, split.chunks, True)
            part = segmented_attention(qs[:, :, idx], ks, vs, plan, causal=True)
            assert (part - ref[:, :, idx]).abs().max() < 1e-5


def test_qwen3vl_position_interpolation_matches_transformers():
    """Learned vision positions: bilinear taps (aligned corners) of a side x side table to each image's grid,
    in merge-block order, frames repeating (transformers' ``get_vision_interpolation_indices_and_weights``)."""
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights

    from megatron_vlm.models.qwen3vl.vision import position_interpolation

    grids = torch.tensor([[1, 4, 20], [1, 16, 8], [2, 6, 6], [1, 2, 2], [1, 48, 2]])
    for side in (3, 4, 48):
        ref_index, ref_weight = get_vision_interpolation_indices_and_weights(
            grids, num_grid_per_side=side, mode="bilinear", align_corners=True, spatial_merge_size=2)
        index, weight = position_interpolation(grids, side, 2)
        table = torch.randn(side * side, 5, generator=torch.Generator().manual_seed(side))
        ours = (table[index] * weight[..., None]).sum(1)
        ref = (table[ref_index] * ref_weight[..., None].float()).sum(1)
        assert (ours - ref).abs().max() < 1e-6


def test_qwen3vl_interleaved_mrope_matches_transformers(megatron_single):
    """Interleaved mRoPE angles (height/width on every third frequency within their sections) == transformers'
    ``Qwen3VLTextRotaryEmbedding`` on 3-D positions that differ per axis."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    from megatron_vlm.models.qwen3vl.model import InterleavedMultimodalRotaryEmbedding
    from megatron_vlm.models.qwen3vl.tiny import tiny_qwen3vl_config

    for section in ((24, 20, 20), (2, 3, 3)):
        head_dim = 2 * sum(section)
        text = tiny_qwen3vl_config(hidden_size=head_dim * 2, num_heads=2, num_kv_heads=1, mrope_section=section).text_config
        positions = torch.randint(0, 5000, (3, 2, 33), generator=torch.Generator().manual_seed(0))
        cos, sin = Qwen3VLTextRotaryEmbedding(text)(torch.zeros(1, dtype=torch.float32), positions)
        ours = InterleavedMultimodalRotaryEmbedding(kv_channels=head_dim, rotary_percent=1.0, rotary_base=5e6)(
            positions, list(section))  # [s, b, 1, head_dim]
        angles = ours[:, :, 0].transpose(0, 1)  # [b, s, head_dim]
        assert torch.allclose(angles.cos(), cos, atol=1e-5) and torch.allclose(angles.sin(), sin, atol=1e-5)


def test_qwen3vl_deepstack_features_reach_the_language_model(megatron_single):
    """Guard against a vacuous DeepStack: zeroing the first tap's merger (added after language layer 0, read by
    layer 1's attention) changes the logits of the text after the images."""
    _, model = _pair("q3_base", seed=10)
    ids, grids, pixels = _row(model, [3, (1, 8, 8), 5], seed=11)
    with torch.no_grad():
        before = model(ids[None], pixel_values=pixels, image_grid_thw=grids)
        model.vision_model.deepstack_mergers[0].linear_fc2.weight.zero_()
        model.vision_model.deepstack_mergers[0].linear_fc2.bias.zero_()
        after = model(ids[None], pixel_values=pixels, image_grid_thw=grids)
    assert (before[0, -1] - after[0, -1]).abs().max() > 100 * TOL * before.abs().max()


# -- config ---------------------------------------------------------------------------------------

def test_ntk_base_matches_transformers_dynamic_rope():
    from transformers import Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from megatron_vlm.models.config import ntk_rope_base

    for head_dim, original, target in ((128, 32768, 131072), (64, 4096, 10000)):
        hf = Qwen2Config(hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=original,
                         rope_parameters={"rope_type": "dynamic", "rope_theta": 1e6, "factor": 1.0})
        inv_freq, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf, None, seq_len=target)
        base = ntk_rope_base(1e6, head_dim, target, original)
        ours = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        assert torch.allclose(ours.float(), inv_freq.float(), rtol=1e-6)
    assert abs(ntk_rope_base(1e6, 128, 4, 1) / 4.09e6 - 1) < 0.01  # the paper-scale figure


def test_config_from_hub_style_config_json(tmp_path):
    """The hub's flat config.json (7B shapes): rope base modes, GQA, vision geometry, export of the base."""
    from megatron_vlm.errors import ConfigError
    from megatron_vlm.models.config import RopeSettings
    from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf

    hub = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "vocab_size": 152064,
        "max_position_embeddings": 128000, "tie_word_embeddings": False, "hidden_act": "silu",
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "image_token_id": 151655, "vision_start_token_id": 151652,
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112,
                          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3,
                          "hidden_act": "silu"},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hub))
    cfg = qwen25vl_config_from_hf(tmp_path)
    assert (cfg.language.num_query_groups, cfg.language.kv_channels, cfg.language.mrope_section) == (4, 128, [16, 24, 24])
    assert cfg.vision.fullatt_block_indexes == (7, 15, 23, 31) and cfg.vision.kv_channels == 80
    assert cfg.rotary_base == 1e6 and not cfg.tie_word_embeddings
    ntk = qwen25vl_config_from_hf(path, rope=RopeSettings(mode="ntk", target_length=131072, original_length=32768))
    assert abs(ntk.rotary_base / 4.09e6 - 1) < 0.01
    assert ntk.to_hf_config()["rope_theta"] == ntk.rotary_base
    assert ntk.to_hf_config()["max_position_embeddings"] == 131072 and ntk.max_sequence_length == 131072
    explicit = qwen25vl_config_from_hf(hub, rope=RopeSettings(mode="explicit", base=5e6))
    assert explicit.rotary_base == 5e6
    with pytest.raises(ConfigError, match="explicit"):
        qwen25vl_config_from_hf(hub, rope=RopeSettings(mode="explicit"))
    with pytest.raises(ConfigError, match="vision_config"):
        qwen25vl_config_from_hf({k: v for k, v in hub.items() if k != "vision_config"})


@pytest.mark.parametrize("impl,attention", [("te", "torch"), ("local", "te"), ("te", "te")])
def test_te_parts_fail_clearly_without_cuda(megatron_single, impl, attention):
    """No GPU, or (on a GPU machine) the CPU pinned as in this suite: TE linears and TE attention refuse."""
    from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf
    from megatron_vlm.models.qwen25vl.model import Qwen25VLModel
    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    cfg = qwen25vl_config_from_hf(tiny_qwen25vl_config().to_dict(), attention_backend=attention, transformer_impl=impl)
    key = "transformer_impl" if impl == "te" else "attention_backend"
    with pytest.raises(RuntimeError, match=f"model.{key}=te needs a CUDA GPU and Transformer Engine"):
        Qwen25VLModel(cfg)


def test_checkpoint_keys_follow_docs_checkpoints_md(megatron_single):
    """Sharded-state-dict keys (what dist checkpoints and the converter use) are the documented names."""
    from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf
    from megatron_vlm.models.qwen25vl.model import Qwen25VLModel
    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    model = Qwen25VLModel(qwen25vl_config_from_hf(tiny_qwen25vl_config().to_dict()))
    keys = {v.key for k, v in model.sharded_state_dict().items() if not k.endswith("_extra_state")}
    layer = ["self_attention.linear_qkv.layer_norm_weight", "self_attention.linear_qkv.weight",
             "self_attention.linear_qkv.bias", "self_attention.linear_proj.weight",
             "mlp.linear_fc1.layer_norm_weight", "mlp.linear_fc1.weight", "mlp.linear_fc2.weight"]
    vision_extra = ["self_attention.linear_proj.bias", "mlp.linear_fc1.bias", "mlp.linear_fc2.bias"]
    expected = {f"language_model.decoder.layers.{n}" for n in layer}
    expected |= {f"vision_model.decoder.layers.{n}" for n in layer + vision_extra}
    expected |= {"language_model.embedding.word_embeddings.weight", "language_model.decoder.final_layernorm.weight",
                 "language_model.output_layer.weight", "vision_model.patch_embed.proj.weight",
                 "vision_model.merger.layer_norm.weight"}
    expected |= {f"vision_model.merger.linear_fc{i}.{k}" for i in (1, 2) for k in ("weight", "bias")}
    assert keys == expected


def test_qwen3vl_config_from_hub_config_json():
    """Qwen3-VL-8B's hub config (rope_scaling under text_config): shapes, DeepStack, q/k norm, no QKV bias,
    LayerNorm GELU vision tower, the native 256K window; MoE and biased-attention configs are refused."""
    from launch.tune.presets import MODELS
    from megatron_vlm.errors import ConfigError
    from megatron_vlm.models.qwen3vl.config import qwen3vl_config_from_hf

    hub = MODELS["qwen3-vl-8b"]
    cfg = qwen3vl_config_from_hf(hub)
    lang, vis = cfg.language, cfg.vision
    assert (lang.num_layers, lang.num_query_groups, lang.kv_channels, lang.mrope_section) == (36, 8, 128, [24, 20, 20])
    assert lang.qk_layernorm and not lang.add_qkv_bias and cfg.deepstack_layers == 3 and cfg.arch.mrope_interleaved
    assert (vis.normalization, vis.gated_linear_unit, vis.patch_size, vis.deepstack_visual_indexes) == (
        "LayerNorm", False, 16, (8, 16, 24))
    assert cfg.rotary_base == 5e6 and cfg.max_sequence_length == 262144 and cfg.arch.family.geometry.factor == 32
    moe = json.loads(json.dumps(hub))
    moe["text_config"]["num_experts"] = 128
    with pytest.raises(ConfigError, match="MoE"):
        qwen3vl_config_from_hf(moe)
    from megatron_vlm.parallel import ParallelLayout

    with pytest.raises(ConfigError, match="DeepStack layers must sit in the first virtual stage"):
        qwen3vl_config_from_hf(hub, layout=ParallelLayout(pp=4, vpp=9))  # chunks of 1 layer, 3 DeepStack layers
    assert qwen3vl_config_from_hf(hub, layout=ParallelLayout(pp=4, vpp=3)).deepstack_layers == 3


def test_images_split_over_context_parallel_ranks():
    """Contiguous image ranges covering every image once, balanced by patch count; ranks may get none."""
    from megatron_vlm.models.context_parallel import split_images_by_cost

    assert split_images_by_cost([10, 10, 10, 10], 2) == [(0, 2), (2, 4)]
    assert split_images_by_cost([100, 1, 1], 2) == [(0, 1), (1, 3)]
    assert split_images_by_cost([5], 2) == [(0, 1), (1, 1)]
    assert split_images_by_cost([1, 1, 1, 1, 1, 1, 1, 1], 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_thd_description_for_transformer_engine():
    """What the te core attention hands Transformer Engine: cu_seqlens of the real lengths, cu_seqlens_padded of
    the stream positions, the longest padded segment; window layers have no padding."""
    from megatron_vlm.models.attention import AttentionSegments

    seg = AttentionSegments(cu_seqlens=torch.tensor([0, 8, 20, 24]), seqlens=torch.tensor([7, 10, 4]),
                            window_cu_seqlens=torch.tensor([0, 4, 8, 12, 16, 20, 24]),
                            full_attention_layers=frozenset({0}))
    real, padded, longest = seg.thd(1)  # layer 1 (index 0) attends over the samples
    assert real.tolist() == [0, 7, 17, 21] and padded.tolist() == [0, 8, 20, 24] and longest == 12
    assert real.dtype == padded.dtype == torch.int32
    real, padded, longest = seg.thd(2)  # a window layer
    assert real.tolist() == padded.tolist() == [0, 4, 8, 12, 16, 20, 24] and longest == 4
