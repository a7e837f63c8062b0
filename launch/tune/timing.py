"""Predicted step time of a layout: compute, memory traffic, communication, pipeline bubble, optimizer.

Per micro-batch and pipeline stage: the model FLOPs of the stage's share (``megatron_vlm.flops``:
attention at the packed samples' real lengths, the vision tower on stage 0 split over CP ranks by
image, answer-only logits on the last stage), divided by TP x CP, at the dense matmul peak times an
achievable efficiency; activation traffic at the memory bandwidth; recomputation by module (the
attention core's FLOPs, the MLP's GEMMs, the element-wise norms and activation as memory traffic);
TP (sequence-parallel all-gathers / reduce-scatters, the vision tower's all-reduces), CP and pipeline
messages at the bandwidth of the link the group spans (NVLink inside a node, the network across
nodes). CP by communication: the torch backend's K/V all-gather (forward) and gradient reduce
(backward) are exposed; Transformer Engine's p2p ring exchanges the same K/V blocks (and their
gradients) while attention computes, so only what attention does not hide is exposed; its all_gather
gathers again in backward; a2a exchanges Q, K, V and the output over heads, exposed. The 1F1B pipeline runs ``m`` micro-batches in
``(m - 1) * slowest stage + sum of stages``; gradient reduce-scatter and parameter all-gather over
DP x CP overlap with the last backward / first forward; the Adam step streams the optimizer shard.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from launch.tune.layout import Layout
from launch.tune.memory import ModelStates, Setup, activations, model_states, stage_parameters
from launch.tune.workload import Row
from megatron_vlm.flops import FlopCount
from megatron_vlm.hardware import GpuSpec
from megatron_vlm.models.hf_config import VLArch


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of the peaks (the cost model's calibration constants)."""

    gemm: float = 0.70          # of the dense matmul peak, for the linear layers
    attention: float = 0.45     # of the dense bf16 peak, for flash-style attention (forward + backward)
    network: float = 0.80       # of the link bandwidth, for collectives and pipeline messages
    traffic: float = 3.0        # memory bytes moved per kept activation byte (written, read, gradient written)
    optimizer_bytes: float = 32.0  # memory bytes an optimizer step moves per parameter of the shard (fused Adam:
    #                                read fp32 grad, master weight and 2 moments, write those 3 and the 16-bit weight)


@dataclass(frozen=True)
class TimeEstimate:
    """Seconds per optimizer step, and what they are spent on (per-step totals, slowest stage)."""

    step: float
    stage_times: tuple[float, ...]   # one micro-batch, forward + backward, per stage
    parts: dict[str, float]          # seconds per step, by cause (slowest stage; the bubble separately)
    tokens_per_gpu: float            # tokens per second per GPU (rows x seq-len, padding included)
    mfu: float                       # model FLOPs / (step x GPUs x dense peak)


def _ring(bytes_: float, n: int, bandwidth: float) -> float:
    """Seconds of a ring all-gather or reduce-scatter of ``bytes_`` (the full tensor) over ``n`` GPUs."""
    return 0.0 if n <= 1 else (n - 1) / n * bytes_ / bandwidth


def _link(span: int, gpus_per_node: int, gpu: GpuSpec, eff: Efficiency) -> float:
    """Bytes per second per GPU of a group whose ranks span ``span`` consecutive GPUs."""
    return 1e9 * eff.network * (gpu.nvlink_gbps if span <= gpus_per_node else gpu.network_gbps)


def stage_micro_batch_time(arch: VLArch, layout: Layout, setup: Setup, row: Row, flops: FlopCount,
                           stage: int, gpu: GpuSpec, gpus_per_node: int, eff: Efficiency) -> dict[str, float]:
    """Seconds one GPU of ``stage`` spends on one micro-batch (forward + backward), by cause."""
    tp, cp, b = layout.tp, layout.cp, layout.micro_batch
    layers = layout.stage_layers(arch.num_layers)[stage]
    share = layers / arch.num_layers
    f, bw = flops.forward, flops.backward
    linear = share * (f.language_linear + bw.language_linear)
    attention = share * (f.language_attention + bw.language_attention)
    recompute_linear = recompute_attention = 0.0
    modules = set(layout.recompute_modules)
    if layout.recompute == "full":
        recompute_linear, recompute_attention = share * f.language_linear, share * f.language_attention
    if "core_attn" in modules:
        recompute_attention = share * f.language_attention
    if "mlp" in modules:
        recompute_linear = share * f.language_linear * mlp_share(arch.hidden_size, arch.num_heads * arch.head_dim,
                                                                   arch.num_query_groups * arch.head_dim,
                                                                   arch.ffn_hidden_size)
    if stage == 0:
        linear += f.vision_linear + bw.vision_linear
        attention += f.vision_attention + bw.vision_attention
        if layout.recompute == "full":
            recompute_linear += f.vision_linear
        if layout.recompute == "full" or "core_attn" in modules:
            recompute_attention += f.vision_attention
        if "mlp" in modules:
            hidden = arch.vision_hidden_size
            recompute_linear += f.vision_linear * mlp_share(hidden, hidden, hidden, arch.vision_ffn_hidden_size)
    if stage == layout.pp - 1:
        linear += f.output_layer + bw.output_layer
    split = tp * cp / b  # flops are per row; a micro-batch holds b rows
    gemm_rate = gpu.peak_flops(setup.precision) * eff.gemm
    attn_rate = gpu.peak_flops("fp32" if setup.precision == "fp32" else "bf16") * eff.attention
    out = {
        "gemm": linear / split / gemm_rate,
        "attention": attention / split / attn_rate,
        "recompute": (recompute_linear / gemm_rate + recompute_attention / attn_rate) / split,
    }
    plain = activations(arch, replace(layout, recompute="none", recompute_modules=()), setup, row, stage)
    traffic = eff.traffic * (plain.total - plain.inputs)
    if layout.recompute != "none":  # what recomputation writes again
        kept = activations(arch, layout, setup, row, stage)
        traffic += max(0.0, plain.language + plain.vision - kept.language - kept.vision)
    # each weight gradient is written in the model dtype, then added into the fp32 gradient buffer
    params = sum(p.numel for p in stage_parameters(arch, layout, stage))
    traffic += params * (2 * setup.act_bytes + 2 * setup.grad_bytes)
    out["memory"] = traffic / (1e9 * gpu.hbm_gbps)

    act, seq = setup.act_bytes, row.tokens * b
    local = seq / cp
    tp_bw = _link(tp, gpus_per_node, gpu, eff)
    # SP: 2 all-gathers + 2 reduce-scatters per pass; recomputed layers (MLPs) gather (and reduce) again
    collectives = 8 + (4 if layout.recompute == "full" else 2 if "mlp" in modules else 0)
    tp_time = layers * collectives * _ring(act * arch.hidden_size * local, tp, tp_bw)
    if stage == 0 and row.image_grids and tp > 1:
        patches = row.patches * b / cp
        reduces = 4 + (2 if layout.recompute == "full" else 0)  # all-reduce = reduce-scatter + all-gather
        tp_time += arch.vision_layers * reduces * 2 * _ring(act * arch.vision_hidden_size * patches, tp, tp_bw)
    out["tp_comm"] = tp_time
    cp_time = 0.0
    if cp > 1:
        cp_bw = _link(tp * cp, gpus_per_node, gpu, eff)
        layer_attention = (out["attention"] / layers) if layers else 0.0  # one layer's, forward + backward
        cp_time = layers * cp_layer_time(arch, layout, setup, seq, cp_bw, layer_attention)
        if stage == 0:
            cp_time += 2 * _ring(act * arch.hidden_size * row.image_tokens * b, cp, cp_bw)  # image embeddings
    out["cp_comm"] = cp_time
    if layout.pp > 1:
        span = tp * cp * layout.dp * layout.pp
        message = act * arch.hidden_size * (local / tp if layout.sp else local)
        sends = (stage > 0) + (stage < layout.pp - 1)  # activations forward, gradients backward
        out["pp_comm"] = 2 * sends * message / _link(span, gpus_per_node, gpu, eff)
    else:
        out["pp_comm"] = 0.0
    return out


def mlp_share(hidden: int, q: int, kv: int, ffn: int) -> float:
    """The MLP's share of a layer's linear FLOPs (gated: three ``hidden x ffn`` GEMMs)."""
    mlp = 3 * hidden * ffn
    return mlp / (mlp + hidden * (q + 2 * kv) + q * hidden)


def cp_layer_time(arch: VLArch, layout: Layout, setup: Setup, seq: float, bandwidth: float,
                  attention_seconds: float) -> float:
    """Exposed seconds of one language layer's context-parallel communication (forward + backward)."""
    tp, cp, act = layout.tp, layout.cp, setup.act_bytes
    comm = layout.parallel.cp_comm_type_for(setup.attention_backend)
    kv_full = 2 * act * arch.num_query_groups // tp * arch.head_dim * seq  # K and V of the whole stream
    refresh = 1 if layout.recompute == "full" or "core_attn" in layout.recompute_modules else 0
    if comm == "p2p":  # forward ring of K/V, backward ring of K/V and of their gradients, under attention
        ring = (1 + refresh + 2) * _ring(kv_full, cp, bandwidth)
        return max(0.0, ring - attention_seconds * (1 + refresh / 3))
    if comm == "a2a":  # Q, K, V in and the output back, forward and backward
        q = act * arch.num_heads // tp * arch.head_dim * seq
        return (2 + refresh) * (cp - 1) / cp * (2 * q + kv_full) / cp / bandwidth
    gathers = 1 + refresh + (1 if setup.attention_backend == "te" else 0)  # TE gathers again in backward
    return (gathers + 1) * _ring(kv_full, cp, bandwidth)  # and the gradients' reduce


def estimate_time(arch: VLArch, layout: Layout, setup: Setup, row: Row, flops: FlopCount, *,
                  global_batch: int, gpu: GpuSpec, gpus_per_node: int, eff: Efficiency = Efficiency(),
                  states: list[ModelStates] | None = None) -> TimeEstimate:
    """Step time of ``global_batch`` rows (``flops``: the model FLOPs of one row, e.g. a workload's mean;
    ``states``: each stage's :func:`model_states`, if known)."""
    m = global_batch // (layout.dp * layout.micro_batch)
    stages = [stage_micro_batch_time(arch, layout, setup, row, flops, s, gpu, gpus_per_node, eff)
              for s in range(layout.pp)]
    totals = [sum(s.values()) for s in stages]
    slow = max(range(layout.pp), key=lambda s: totals[s])
    pipeline = (m - 1) * totals[slow] + sum(totals)
    parts = {k: m * v for k, v in stages[slow].items()}
    parts["bubble"] = sum(totals) - totals[slow]

    dp_cp = layout.dp * layout.cp
    states = states or [model_states(arch, layout, setup, s) for s in range(layout.pp)]
    dp_bw = _link(layout.tp * dp_cp, gpus_per_node, gpu, eff)
    biggest = max(states, key=lambda st: st.gradients)
    buffer = biggest.gradients / setup.grad_bytes
    reduce = _ring(biggest.gradients, dp_cp, dp_bw)  # reduce-scatter (distributed optimizer) of fp32 grads
    gather = _ring(buffer * setup.param_bytes, dp_cp, dp_bw) if setup.distributed_optimizer else reduce
    last = stages[slow]
    backward_window = (last["gemm"] + last["attention"]) * 2 / 3
    forward_window = (last["gemm"] + last["attention"]) / 3
    if setup.overlap_grad_reduce:
        parts["dp_comm"] = max(0.0, reduce - backward_window) + max(0.0, gather - forward_window)
    else:
        parts["dp_comm"] = reduce + gather
    # zero the gradient buffer, then the Adam step over this rank's shard
    shard = max(st.optimizer for st in states) / (setup.main_param_bytes + 8)
    parts["optimizer"] = (biggest.gradients + shard * eff.optimizer_bytes) / (1e9 * gpu.hbm_gbps)
    step = pipeline + parts["dp_comm"] + parts["optimizer"]
    tokens = global_batch * row.tokens
    peak = gpu.peak_flops("fp32" if setup.precision == "fp32" else "bf16")
    return TimeEstimate(step=step, stage_times=tuple(totals), parts=parts,
                        tokens_per_gpu=tokens / step / layout.gpus,
                        mfu=flops.total * global_batch / (step * layout.gpus * peak))
