"""Model FLOPs (megatron_vlm/flops.py) against a hand count and against torch's FLOP counter on the real model."""

from __future__ import annotations

import pytest
import torch
from helpers.vlm_inputs import make_row
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from megatron_vlm import runtime
from megatron_vlm.flops import causal_pairs, model_flops, window_pairs
from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf
from megatron_vlm.models.qwen25vl.model import Qwen25VLModel
from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config
from megatron_vlm.models.qwen25vl.vision import window_layout


@pytest.fixture(scope="module")
def tiny():
    runtime.initialize_distributed(seed=0)
    config = qwen25vl_config_from_hf(tiny_qwen25vl_config().to_dict())
    yield config, Qwen25VLModel(config)
    runtime.destroy()


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny_of_each_family(request):
    """Each family's tiny model (Qwen3-VL: plain GELU vision MLP, DeepStack mergers, learned positions)."""
    from megatron_vlm.models.registry import get_family

    family = get_family(request.param)
    runtime.initialize_distributed(seed=0)
    config = family.config_from_hf(family.tiny_config().to_dict())
    yield config, family.model_class(config)
    runtime.destroy()


def test_hand_count_on_the_tiny_config(tiny):
    """Tiny: LM hidden 64, 4 heads x 16 (2 KV groups), SwiGLU 128, 2 layers, vocab 151,936; vision hidden
    32, 2 heads x 16, SwiGLU 64, 4 layers (1 and 3 full attention), windows of 4 x 4 merge units."""
    config, _ = tiny
    count = model_flops(config.arch, segments=[40, 24], image_grids=[(1, 8, 12)], answer_tokens=5)
    f, b = count.forward, count.backward
    # per token per layer: QKV 2*64*(64+2*32) + proj 2*64*64 + MLP 3*2*64*128 = 73,728; 64 tokens, 2 layers
    assert f.language_linear == 73_728 * 64 * 2
    # causal pairs 40*41/2 + 24*25/2 = 1,120; QK^T and PV: 2 * 2 * 64 (heads x dim) per pair, 2 layers
    assert f.language_attention == 4 * 64 * 1_120 * 2
    assert f.output_layer == 2 * 64 * 151_936 * 5  # the 5 answer tokens only
    # 96 patches: patch embedding 2*1176*32; per layer QKV 2*32*96 + proj 2*32*32 + MLP 3*2*32*64 = 20,480;
    # merger per token (24): 2*128*128 + 2*128*64
    assert f.vision_linear == 96 * 2 * 1176 * 32 + 4 * 96 * 20_480 + 24 * (2 * 128 * 128 + 2 * 128 * 64)
    # 4 x 6 merge units in windows of 4 x 4: windows of 64 and 32 patches; a full frame is 96 patches
    assert f.vision_attention == 4 * 32 * (2 * (64 ** 2 + 32 ** 2) + 2 * 96 ** 2)
    # backward: twice the forward, except the patch embedding (no gradient for the pixels)
    assert b.language_linear == 2 * f.language_linear and b.output_layer == 2 * f.output_layer
    assert b.vision_linear == 2 * f.vision_linear - 96 * 2 * 1176 * 32
    assert count.total == f.total + b.total
    # without a loss mask the output layer runs on every token
    assert model_flops(config.arch, [40, 24]).forward.output_layer == 2 * 64 * 151_936 * 64


def test_window_pairs_match_the_models_window_layout():
    for grid in [(1, 8, 12), (1, 20, 36), (2, 14, 10), (1, 2, 2)]:
        _, cu = window_layout(torch.tensor([grid]), 2, 112, 14)
        lengths = (cu[1:] - cu[:-1]).tolist()
        assert window_pairs(grid, merge=2, units_per_window=4) == sum(n * n for n in lengths)
    assert causal_pairs([3, 1]) == 6 + 1


def test_counts_equal_torch_flop_counter_on_the_model(tiny_of_each_family):
    """Forward and backward through Qwen25VLModel (packed row, two images, loss mask) under torch's
    FlopCounterMode: its matmul + convolution FLOPs equal ours; with SDPA's math kernel the attention
    matmuls equal ours with causal samples counted as full squares (the math kernel masks, it does not skip)."""
    config, model = tiny_of_each_family
    patch_dim = config.arch.family.geometry.patch_dim
    a = make_row([12, (1, 8, 12), 6], seed=1, patch_dim=patch_dim)
    b = make_row([5, (1, 4, 4), 9], seed=2, patch_dim=patch_dim)
    ids = torch.cat([a[0], b[0]])[None]
    grids, pixels = torch.cat([a[1], b[1]]), torch.cat([a[2], b[2]])
    cu = torch.tensor([0, len(a[0]), ids.shape[1]])
    labels = torch.randint(0, 1000, ids.shape)
    mask = torch.zeros_like(labels)
    mask[0, [10, 11, 40, 41, 42]] = 1
    segments = [len(a[0]), len(b[0])]
    ours = model_flops(config.arch, segments, grids.tolist(), answer_tokens=5)

    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        loss = model(ids, pixel_values=pixels, image_grid_thw=grids, cu_seqlens=cu, labels=labels, loss_mask=mask)
        forward = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
        loss.sum().backward()
    total = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    attention = sum(v for name, ops in counter.get_flop_counts().items() if name.endswith("core_attention")
                    for op, v in ops.items() if "bmm" in str(op))
    linear_fwd = forward["aten.mm"] + forward["aten.convolution"]
    linear_bwd = total["aten.mm"] - forward["aten.mm"] + total["aten.convolution_backward"]
    f, bw = ours.forward, ours.backward
    assert linear_fwd == f.language_linear + f.output_layer + f.vision_linear
    assert linear_bwd == bw.language_linear + bw.output_layer + bw.vision_linear
    arch = config.arch
    square = 4 * arch.num_heads * arch.head_dim * arch.num_layers * sum(n * n for n in segments)
    assert attention == 3 * (square + f.vision_attention)  # forward + backward (2x)
    assert f.language_attention == square * causal_pairs(segments) / sum(n * n for n in segments)
