"""``launch.tune.timing``: the step-time cost model, part by part, against hand computations.

Round-number GPU and efficiency figures and hand-picked FLOP counts make every expected figure a
short formula written out here (the model's shapes come from the Qwen2.5-VL 7B preset's config).
"""

from __future__ import annotations

import pytest

from launch.tune.layout import Layout
from launch.tune.memory import ModelStates, Setup
from launch.tune.presets import MODELS
from launch.tune.timing import Efficiency, cp_layer_time, estimate_time, mlp_share, stage_micro_batch_time
from launch.tune.workload import Row
from megatron_vlm.flops import FlopCount, FlopParts
from megatron_vlm.hardware import GpuSpec
from megatron_vlm.models.qwen25vl.arch import Qwen25VLArch

ARCH = Qwen25VLArch.from_hf(MODELS["qwen2.5-vl-7b"])  # hidden 3584, 28 layers, 28 heads, 4 groups, head_dim 128
# 100 / 200 / 400 TFLOP/s; 1 TB/s HBM; 100 GB/s NVLink, 10 GB/s network
GPU = GpuSpec("test", 80, 100.0, 200.0, 400.0, 1000, 100, 10, 1024)
EFF = Efficiency(gemm=0.5, attention=0.25, network=0.5)
GEMM = 200e12 * 0.5    # bf16 peak x gemm efficiency
ATTN = 200e12 * 0.25   # bf16 peak x attention efficiency
NVLINK, NETWORK = 0.5 * 100e9, 0.5 * 10e9
SEQ = 8192
ROW = Row(segments=(SEQ,), image_grids=(), answer_tokens=100)
FWD = FlopParts(language_linear=2e15, language_attention=1e15, output_layer=1e13, vision_linear=4e14,
                vision_attention=2e14)
FLOPS = FlopCount(FWD, FWD.scale(2))  # backward = 2 x forward
ACT = 2  # bf16 bytes
BF16 = Setup()


def stage(layout: Layout, stage_index: int = 0, *, setup: Setup = BF16, row: Row = ROW, flops: FlopCount = FLOPS,
          gpus_per_node: int = 8, gpu: GpuSpec = GPU) -> dict[str, float]:
    return stage_micro_batch_time(ARCH, layout, setup, row, flops, stage_index, gpu, gpus_per_node, EFF)


def test_compute_is_flops_over_tp_cp_at_the_efficient_peak():
    """Forward + backward (3x forward) of the stage's share, divided over TP x CP, times the rows of a micro-batch."""
    out = stage(Layout.make(tp=2, cp=2))
    linear = 3 * (2e15 + 4e14 + 1e13)  # language, vision (stage 0), output layer (last stage)
    attention = 3 * (1e15 + 2e14)
    assert out["gemm"] == pytest.approx(linear / 4 / GEMM)
    assert out["attention"] == pytest.approx(attention / 4 / ATTN)
    assert out["recompute"] == 0.0
    two_rows = stage(Layout.make(tp=2, cp=2, micro_batch=2))
    assert two_rows["gemm"] == pytest.approx(2 * linear / 4 / GEMM)


def test_pipeline_stages_split_the_layers_vision_first_logits_last():
    first, last = stage(Layout.make(pp=2), 0), stage(Layout.make(pp=2), 1)
    assert first["gemm"] == pytest.approx(3 * (2e15 / 2 + 4e14) / GEMM)
    assert last["gemm"] == pytest.approx(3 * (2e15 / 2 + 1e13) / GEMM)
    assert first["attention"] == pytest.approx(3 * (1e15 / 2 + 2e14) / ATTN)
    assert last["attention"] == pytest.approx(3 * 1e15 / 2 / ATTN)
    uneven = stage(Layout.make(pp=2, first_stage_layers=7), 0)  # 7 of 28 layers on stage 0
    assert uneven["gemm"] == pytest.approx(3 * (2e15 / 4 + 4e14) / GEMM)


def test_precision_picks_the_peak():
    """FP8 runs the GEMMs at the fp8 peak (attention stays bf16); fp32 runs both at the fp32 peak."""
    bf16, fp8 = stage(Layout.make()), stage(Layout.make(), setup=Setup(precision="fp8"))
    assert fp8["gemm"] == pytest.approx(bf16["gemm"] / 2)
    assert fp8["attention"] == pytest.approx(bf16["attention"])
    fp32 = stage(Layout.make(), setup=Setup(precision="fp32"))
    assert fp32["gemm"] == pytest.approx(2 * bf16["gemm"])
    assert fp32["attention"] == pytest.approx(2 * bf16["attention"])


def test_more_context_parallel_ranks_means_less_compute_per_gpu():
    per_gpu = [stage(Layout.make(cp=cp)) for cp in (1, 2, 4, 8)]
    compute = [p["gemm"] + p["attention"] for p in per_gpu]
    assert all(a > b for a, b in zip(compute, compute[1:]))
    assert compute[3] == pytest.approx(compute[0] / 8)


def test_mlp_share_by_hand():
    # MLP 3 * 4 * 8 = 96; attention projections 4 * (4 + 2 * 2) + 4 * 4 = 48
    assert mlp_share(4, 4, 2, 8) == pytest.approx(96 / 144)


def test_recomputation_adds_the_forward_it_repeats():
    full = stage(Layout.make(recompute="full"))
    assert full["recompute"] == pytest.approx((2e15 + 4e14) / GEMM + (1e15 + 2e14) / ATTN)
    attn = stage(Layout.make(recompute="selective", recompute_modules=("core_attn",)))
    assert attn["recompute"] == pytest.approx((1e15 + 2e14) / ATTN)
    mlp = stage(Layout.make(recompute="selective", recompute_modules=("mlp",)))
    h, q, kv, ffn = 3584, 28 * 128, 4 * 128, 18944
    lm_share = 3 * h * ffn / (3 * h * ffn + h * (q + 2 * kv) + q * h)
    vh, vffn = 1280, 3420
    vision_share = 3 * vh * vffn / (3 * vh * vffn + vh * 3 * vh + vh * vh)
    assert mlp["recompute"] == pytest.approx((2e15 * lm_share + 4e14 * vision_share) / GEMM)


def test_tensor_parallel_communication_by_hand():
    """Sequence parallelism: 8 ring collectives per layer of the [seq, hidden] activations; the link is NVLink
    inside a node and the network across nodes; no TP, no communication."""
    ring = (2 - 1) / 2 * ACT * 3584 * SEQ
    assert stage(Layout.make(tp=2))["tp_comm"] == pytest.approx(28 * 8 * ring / NVLINK)
    assert stage(Layout.make(tp=2), gpus_per_node=1)["tp_comm"] == pytest.approx(28 * 8 * ring / NETWORK)
    assert stage(Layout.make(tp=2, recompute="full"))["tp_comm"] == pytest.approx(28 * 12 * ring / NVLINK)
    assert stage(Layout.make())["tp_comm"] == 0.0
    # images add the vision tower's all-reduces (4 per layer, each a reduce-scatter + all-gather)
    with_image = Row((SEQ,), ((1, 32, 32),), 100)
    extra = stage(Layout.make(tp=2), row=with_image)["tp_comm"] - stage(Layout.make(tp=2))["tp_comm"]
    assert extra == pytest.approx(32 * 4 * 2 * (1 / 2 * ACT * 1280 * 1024) / NVLINK)


def test_context_parallel_communication_by_hand():
    """K/V of the whole stream: ``2 x act x groups x head_dim x seq`` bytes per layer."""
    kv = 2 * ACT * 4 * 128 * SEQ
    ring = (2 - 1) / 2 * kv
    # torch backend: all-gather K/V forward, reduce their gradients backward
    assert stage(Layout.make(cp=2))["cp_comm"] == pytest.approx(28 * 2 * ring / NVLINK)
    # Transformer Engine's all_gather gathers again in backward
    te = Setup(attention_backend="te")
    assert stage(Layout.make(cp=2, cp_comm_type="all_gather"), setup=te)["cp_comm"] == pytest.approx(
        28 * 3 * ring / NVLINK)
    # a2a: Q, K, V in and the output back, forward and backward
    q = ACT * 28 * 128 * SEQ
    assert stage(Layout.make(cp=2, cp_comm_type="a2a"), setup=te)["cp_comm"] == pytest.approx(
        28 * 2 * (1 / 2) * (2 * q + kv) / 2 / NVLINK)
    # p2p (TE's default): the K/V ring (forward, backward, gradients) is hidden by attention when it is long enough
    no_attention = FlopCount(FlopParts(language_linear=2e15), FlopParts(language_linear=4e15))
    assert stage(Layout.make(cp=2), setup=te, flops=no_attention)["cp_comm"] == pytest.approx(
        28 * 3 * ring / NVLINK)
    assert stage(Layout.make(cp=2), setup=te)["cp_comm"] == 0.0
    assert stage(Layout.make())["cp_comm"] == 0.0


def test_cp_layer_time_hides_the_ring_under_attention():
    layout, te = Layout.make(cp=4), Setup(attention_backend="te")
    ring = 3 * (3 / 4) * (2 * ACT * 4 * 128 * SEQ) / NVLINK
    assert cp_layer_time(ARCH, layout, te, SEQ, NVLINK, 0.0) == pytest.approx(ring)
    assert cp_layer_time(ARCH, layout, te, SEQ, NVLINK, ring / 4) == pytest.approx(ring * 3 / 4)
    assert cp_layer_time(ARCH, layout, te, SEQ, NVLINK, 2 * ring) == 0.0


def test_pipeline_messages_by_hand():
    message = ACT * 3584 * SEQ  # one [seq, hidden] activation, forward; its gradient backward
    first, last = stage(Layout.make(pp=2), 0), stage(Layout.make(pp=2), 1)
    assert first["pp_comm"] == pytest.approx(2 * message / NVLINK)
    assert last["pp_comm"] == pytest.approx(2 * message / NVLINK)
    middle = stage(Layout.make(pp=4), 1)
    assert middle["pp_comm"] == pytest.approx(2 * 2 * message / NVLINK)
    sp = stage(Layout.make(tp=2, pp=2), 0)  # with sequence parallelism each TP rank sends its slice
    assert sp["pp_comm"] == pytest.approx(2 * message / 2 / NVLINK)
    assert stage(Layout.make())["pp_comm"] == 0.0


def test_step_time_from_flops_and_peak():
    """One GPU, memory traffic made negligible: the step is the micro-batches' compute."""
    fast_memory = GpuSpec("fast memory", 80, 100.0, 200.0, 400.0, 1e12, 100, 10, 1024)
    est = estimate_time(ARCH, Layout.make(), Setup(), ROW, FLOPS, global_batch=4, gpu=fast_memory,
                        gpus_per_node=8, eff=EFF)
    compute = 3 * (2e15 + 4e14 + 1e13) / GEMM + 3 * (1e15 + 2e14) / ATTN
    assert est.step == pytest.approx(4 * compute, rel=1e-6)
    assert est.parts["bubble"] == 0.0 and est.parts["dp_comm"] == 0.0
    assert est.tokens_per_gpu == pytest.approx(4 * SEQ / (4 * compute), rel=1e-6)
    assert est.mfu == pytest.approx(FLOPS.total / (compute * 200e12), rel=1e-6)  # model FLOPs / (step x peak)


def test_one_f_one_b_pipeline_and_its_bubble():
    """``(m - 1) x slowest stage + sum of stages``; the bubble is the sum less the slowest."""
    fast_memory = GpuSpec("fast memory", 80, 100.0, 200.0, 400.0, 1e12, 1e9, 1e9, 1024)
    est = estimate_time(ARCH, Layout.make(pp=2), Setup(), ROW, FLOPS, global_batch=6, gpu=fast_memory,
                        gpus_per_node=8, eff=EFF)
    s0 = 3 * (1e15 + 4e14) / GEMM + 3 * (0.5e15 + 2e14) / ATTN  # vision on stage 0: the slow one
    s1 = 3 * (1e15 + 1e13) / GEMM + 3 * 0.5e15 / ATTN
    assert est.stage_times == pytest.approx((s0, s1), rel=1e-6)
    assert est.parts["bubble"] == pytest.approx(s1, rel=1e-6)
    assert est.step == pytest.approx(5 * s0 + s0 + s1, rel=1e-6)


def test_data_parallel_reduce_and_optimizer_step_by_hand():
    """Given model states: reduce-scatter the fp32 gradients and all-gather the 16-bit weights over DP x CP
    (exposed without overlap); the Adam step streams 32 bytes per parameter of the shard plus the buffer."""
    states = [ModelStates(weights=2 * 10**9, gradients=4 * 10**9, optimizer=12 * 10**8, parameters=10**9)]
    setup = Setup(overlap_grad_reduce=False)
    layout = Layout.make(dp=4)
    est = estimate_time(ARCH, layout, setup, ROW, FLOPS, global_batch=8, gpu=GPU, gpus_per_node=8, eff=EFF,
                        states=states)
    reduce = 3 / 4 * 4e9 / NVLINK
    gather = 3 / 4 * (4e9 / 4 * 2) / NVLINK
    assert est.parts["dp_comm"] == pytest.approx(reduce + gather)
    shard = 12e8 / 12  # optimizer bytes / (fp32 master + 2 fp32 moments)
    assert est.parts["optimizer"] == pytest.approx((4e9 + shard * 32) / 1e12)
    # 16 GPUs span two 8-GPU nodes: the network link
    across = estimate_time(ARCH, Layout.make(dp=16), setup, ROW, FLOPS, global_batch=16, gpu=GPU, gpus_per_node=8,
                           eff=EFF, states=states)
    assert across.parts["dp_comm"] == pytest.approx(15 / 16 * (4e9 + 2e9) / NETWORK)
    # with overlap, a long backward / forward hides them
    hidden = estimate_time(ARCH, layout, Setup(), ROW, FLOPS, global_batch=8, gpu=GPU, gpus_per_node=8, eff=EFF,
                           states=states)
    assert hidden.parts["dp_comm"] == 0.0
    assert est.step - hidden.step == pytest.approx(reduce + gather)
