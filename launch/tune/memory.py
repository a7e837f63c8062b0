"""Predicted device memory of one GPU: model states, activations, logits, buffers.

Model states are counted tensor by tensor from the architecture (:func:`stage_parameters`), in the
order Megatron-Core registers them, and laid out in Megatron DDP's gradient buffer the way
``_ParamAndGradBuffer`` does (64-element aligned parameters and DP-divisible buckets under the
distributed optimizer), so weights, gradients and the distributed optimizer's shard are exact.

Activations are what backward keeps, tensor by tensor, for this stack's layers (``torch``
attention backend: Qwen's fp32 RMSNorm, SDPA per packed sample with GQA K/V repeated to the query
heads, K/V all-gathered to full length under CP, the gated MLP; ``docs/tune.md`` lists them),
under each recompute mode, for the vision tower on the first stage (the CP rank's share of the
images) and the answer-only logits on the last; plus the largest temporary buffers of backward.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numpy as np

from launch.tune.layout import Layout
from launch.tune.workload import Row
from megatron_vlm.models.config import Qwen25VLConfig
from megatron_vlm.models.context_parallel import split_images_by_cost

GIB = 2 ** 30
PRECISIONS = ("bf16", "fp8", "fp32")
PIXEL_BYTES = 4  # the loader's pixel_values are float32


@dataclass(frozen=True)
class Setup:
    """Training settings that change memory and time but are not the parallel layout."""

    precision: str = "bf16"            # bf16 | fp8 (Transformer Engine GEMMs) | fp32 (CPU runs)
    attention_backend: str = "torch"   # torch | te
    distributed_optimizer: bool = True
    overlap_grad_reduce: bool = True   # Megatron DDP buckets of max(40M, 1M x DP) elements
    bucket_size: int | None = None     # explicit DDP bucket size (elements); None: Megatron's default

    @property
    def param_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def act_bytes(self) -> int:
        return self.param_bytes

    @property
    def grad_bytes(self) -> int:
        return 4  # bf16 training reduces gradients in fp32 (grad_reduce_in_fp32)

    @property
    def main_param_bytes(self) -> int:
        return 0 if self.precision == "fp32" else 4  # fp32 master copy of 16-bit weights

    def ddp_bucket_size(self, dp_cp: int, stage: int) -> int | None:
        """Megatron DDP's bucket size: none without overlap and off the first pipeline stage."""
        if not self.overlap_grad_reduce or stage > 0:
            return None
        return self.bucket_size or max(40_000_000, 1_000_000 * dp_cp)


# -- parameters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    numel: int
    shared_embedding: bool = False


def _layer_params(prefix: str, hidden: int, q_size: int, kv_size: int, ffn: int, tp: int, *,
                  linear_bias: bool, qkv_bias: bool, gated: bool) -> list[Param]:
    """One transformer layer's local parameters, in Megatron's registration order (local spec)."""
    qkv = (q_size + 2 * kv_size) // tp
    fc1 = ffn * (2 if gated else 1) // tp
    out = [Param(f"{prefix}.input_layernorm.weight", hidden),
           Param(f"{prefix}.self_attention.linear_proj.weight", hidden * q_size // tp)]
    if linear_bias:
        out.append(Param(f"{prefix}.self_attention.linear_proj.bias", hidden))
    out.append(Param(f"{prefix}.self_attention.linear_qkv.weight", qkv * hidden))
    if qkv_bias:
        out.append(Param(f"{prefix}.self_attention.linear_qkv.bias", qkv))
    out += [Param(f"{prefix}.pre_mlp_layernorm.weight", hidden), Param(f"{prefix}.mlp.linear_fc1.weight", fc1 * hidden)]
    if linear_bias:
        out.append(Param(f"{prefix}.mlp.linear_fc1.bias", fc1))
    out.append(Param(f"{prefix}.mlp.linear_fc2.weight", hidden * ffn // tp))
    if linear_bias:
        out.append(Param(f"{prefix}.mlp.linear_fc2.bias", hidden))
    return out


def stage_parameters(config: Qwen25VLConfig, layout: Layout, stage: int) -> list[Param]:
    """The parameters one GPU of pipeline ``stage`` holds (TP-local sizes), in registration order."""
    lm, v, tp = config.language, config.vision, layout.tp
    first, last = stage == 0, stage == layout.pp - 1
    params: list[Param] = []
    if first:
        patch = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
        params.append(Param("vision_model.patch_embed.proj.weight", v.hidden_size * patch))
        for i in range(v.num_layers):
            params += _layer_params(f"vision_model.decoder.layers.{i}", v.hidden_size,
                                    v.num_attention_heads * v.kv_channels, v.num_query_groups * v.kv_channels,
                                    v.ffn_hidden_size, tp, linear_bias=True, qkv_bias=True,
                                    gated=v.gated_linear_unit)
        width = v.hidden_size * v.spatial_merge_size ** 2
        params += [Param("vision_model.merger.layer_norm.weight", v.hidden_size),
                   Param("vision_model.merger.linear_fc1.weight", width * width // tp),
                   Param("vision_model.merger.linear_fc1.bias", width // tp),
                   Param("vision_model.merger.linear_fc2.weight", v.out_hidden_size * width // tp),
                   Param("vision_model.merger.linear_fc2.bias", v.out_hidden_size)]
    tied, single = config.tie_word_embeddings, layout.pp == 1
    embedding = config.vocab_size // tp * lm.hidden_size
    if first:
        params.append(Param("language_model.embedding.word_embeddings.weight", embedding, shared_embedding=tied))
    groups = lm.num_query_groups or lm.num_attention_heads
    for i in range(layout.stage_layers(lm.num_layers)[stage]):
        params += _layer_params(f"language_model.decoder.layers.{i}", lm.hidden_size,
                                lm.num_attention_heads * lm.kv_channels, groups * lm.kv_channels,
                                lm.ffn_hidden_size, tp, linear_bias=lm.add_bias_linear,
                                qkv_bias=lm.add_qkv_bias, gated=lm.gated_linear_unit)
    if last:
        params.append(Param("language_model.decoder.final_layernorm.weight", lm.hidden_size))
        if not (tied and single):
            params.append(Param("language_model.output_layer.weight", embedding, shared_embedding=tied))
    return params


def grad_buffer_layout(params: list[Param], *, dp: int, distributed_optimizer: bool,
                       bucket_size: int | None) -> tuple[int, np.ndarray]:
    """Megatron DDP's gradient buffer for ``params``: ``(buffer elements, parameter elements in each
    DP rank's shard)`` (without the distributed optimizer every rank holds all of them).

    As ``_ParamAndGradBuffer`` lays it out: parameters in reverse registration order; under the
    distributed optimizer each parameter starts 64-aligned, a shared embedding gets its own bucket,
    and every bucket is padded to a multiple of ``lcm(dp, 128)`` and split into ``dp`` equal shards.
    """
    if not distributed_optimizer:
        total = sum(p.numel for p in params)
        return total, np.full(dp, total, dtype=np.int64)
    divisor = math.lcm(dp, 128)
    buckets: list[tuple[int, int, list[tuple[int, int]]]] = []  # (start, end, param ranges)
    start = cursor = 0
    ranges: list[tuple[int, int]] = []

    def close(end: int) -> int:
        nonlocal start, ranges
        padded = -(-end // divisor) * divisor
        buckets.append((start, padded, ranges))
        start, ranges = padded, []
        return padded

    for p in reversed(params):
        cursor = -(-cursor // 64) * 64
        if p.shared_embedding and ranges:
            cursor = close(cursor)
        ranges.append((cursor, cursor + p.numel))
        cursor += p.numel
        if p.shared_embedding or (bucket_size is not None and cursor - start >= bucket_size):
            cursor = close(cursor)
    if ranges:
        cursor = close(cursor)
    shard_params = np.zeros(dp, dtype=np.int64)
    for b0, b1, rs in buckets:
        shard = (b1 - b0) // dp
        for a, e in rs:
            for r in range((a - b0) // shard, (e - 1 - b0) // shard + 1):
                lo, hi = b0 + r * shard, b0 + (r + 1) * shard
                shard_params[r] += min(e, hi) - max(a, lo)
    return cursor, shard_params


@dataclass(frozen=True)
class ModelStates:
    """Bytes of weights, gradients and optimizer state (Adam: fp32 master weights + 2 moments) on one GPU."""

    weights: int
    gradients: int
    optimizer: int
    parameters: int  # local parameter count

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def model_states(config: Qwen25VLConfig, layout: Layout, setup: Setup, stage: int) -> ModelStates:
    """Weights, gradient buffer and optimizer state of one GPU of ``stage`` (DP x CP shard the optimizer)."""
    params = stage_parameters(config, layout, stage)
    dp_cp = layout.dp * layout.cp
    buffer, shard = grad_buffer_layout(params, dp=dp_cp, distributed_optimizer=setup.distributed_optimizer,
                                       bucket_size=setup.ddp_bucket_size(dp_cp, stage))
    count = sum(p.numel for p in params)
    weights = (buffer if setup.distributed_optimizer else count) * setup.param_bytes
    if setup.precision == "fp8":
        weights += count  # Transformer Engine's fp8 copy of the GEMM weights
    optimizer = int(shard.max()) * (setup.main_param_bytes + 8)
    return ModelStates(weights=weights, gradients=buffer * setup.grad_bytes, optimizer=optimizer, parameters=count)


# -- activations --------------------------------------------------------------------------------


def layer_activation_bytes(*, hidden: int, heads: int, groups: int, head_dim: int, ffn: int, tokens: float,
                           key_tokens: float, norm_tokens: float, runs: int, recompute: str, act: int,
                           backend: str) -> float:
    """Bytes one transformer layer keeps for backward.

    ``tokens``: query tokens on this GPU; ``key_tokens``: keys attended to (all of the sequence
    under CP, where K/V are all-gathered); ``norm_tokens``: tokens the norms see (``tokens / TP``
    with sequence parallelism); ``heads``/``groups``/``ffn``: this TP rank's share; ``runs``: SDPA
    calls per layer (more than one adds a copy of the attention output); ``act``: bytes per element.
    """
    q, kv = heads * head_dim, groups * head_dim
    if recompute == "full":
        return act * hidden * norm_tokens  # Megatron checkpoints each layer's input
    if backend == "te":  # fused norm + linear saves input and normalized output; flash attention, native GQA
        norms = 2 * (2 * act * hidden + 8) * norm_tokens
        attention = act * (q + 2 * kv + q) * tokens + 4 * heads * tokens
    else:  # Qwen's RMSNorm in fp32: the fp32 input, the normalized output and the weighted output
        norms = 2 * (4 * hidden + 2 * act * hidden + 4) * norm_tokens
        if heads != groups or key_tokens != tokens:  # repeated / gathered K, V at the keys' length
            inputs = act * q * tokens + 2 * act * q * key_tokens
        else:  # Q, K after rotary and the fused QKV output V is a view of
            inputs = act * (2 * q + (q + 2 * kv)) * tokens
        attention = inputs + act * q * tokens + 4 * heads * tokens + (act * q * tokens if runs > 1 else 0)
    if recompute == "selective":  # core attention recomputed: its inputs and output stay
        attention = act * (q + kv + (q + 2 * kv) + q) * tokens
    rotary = 4 * act * head_dim * tokens  # cos and sin for Q and K
    mlp = 5 * act * ffn * tokens  # fc1 output, the linear half + 0, SiLU, the product
    return norms + attention + rotary + mlp


def attention_runs(lengths: tuple[int, ...]) -> int:
    """SDPA calls the torch backend makes: runs of consecutive equal-length segments."""
    return sum(1 for i, n in enumerate(lengths) if n and (i == 0 or lengths[i - 1] != n))


@functools.lru_cache(maxsize=4096)
def vision_runs(grids: tuple[tuple[int, int, int], ...], merge: int, units: int) -> tuple[int, int]:
    """SDPA calls of a full-attention vision layer (per frame) and of a window layer (per window)."""
    frames, windows = [], []
    for t, h, w in grids:
        frames += [h * w] * t
        rows = [units] * (h // merge // units) + ([h // merge % units] if h // merge % units else [])
        cols = [units] * (w // merge // units) + ([w // merge % units] if w // merge % units else [])
        windows += [r * c for _ in range(t) for r in rows for c in cols]
    return attention_runs(tuple(frames)), attention_runs(tuple(windows))


@dataclass(frozen=True)
class Activations:
    """Activation bytes of one micro-batch on one GPU of a stage, by part."""

    language: float = 0.0   # the stage's language layers
    vision: float = 0.0     # vision tower (first stage): this CP rank's share of the images
    logits: float = 0.0     # final norm, output-layer input and fp32 softmax of the answer tokens (last stage)
    inputs: float = 0.0     # the micro-batch on the device: pixel values, ids, labels, positions

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))


def activations(config: Qwen25VLConfig, layout: Layout, setup: Setup, row: Row, stage: int) -> Activations:
    """What one micro-batch of ``layout.micro_batch`` rows like ``row`` keeps on one GPU of ``stage``."""
    lm, v, tp, cp, b = config.language, config.vision, layout.tp, layout.cp, layout.micro_batch
    act, backend = setup.act_bytes, setup.attention_backend
    seq = row.tokens * b
    local = seq / cp
    norm_tokens = local / tp if layout.sp else local
    groups = lm.num_query_groups or lm.num_attention_heads
    per_layer = layer_activation_bytes(
        hidden=lm.hidden_size, heads=lm.num_attention_heads // tp, groups=groups // tp, head_dim=lm.kv_channels,
        ffn=lm.ffn_hidden_size // tp, tokens=local, key_tokens=seq if cp > 1 else local, norm_tokens=norm_tokens,
        runs=attention_runs(row.segments) * b, recompute=layout.recompute, act=act, backend=backend)
    language = per_layer * layout.stage_layers(lm.num_layers)[stage]
    if layout.recompute == "full":
        language += 4 * lm.kv_channels * local  # the fp32 rotary angles, kept for the recomputation
    vision = logits = 0.0
    inputs = 44 * seq  # int64 input ids, labels and 3 mRoPE position rows; the fp32 loss mask
    if stage == 0 and row.image_grids:
        grids = list(row.image_grids) * b
        costs = [t * h * w for t, h, w in grids]
        a, e = max(split_images_by_cost(costs, cp), key=lambda r: sum(costs[r[0]:r[1]]))
        mine = grids[a:e]
        patches = sum(costs[a:e])
        units = v.window_size // v.spatial_merge_size // v.patch_size
        frame_runs, window_runs = vision_runs(tuple(mine), v.spatial_merge_size, units)
        full = len(set(v.fullatt_block_indexes))
        for runs, count in ((frame_runs, full), (window_runs, v.num_layers - full)):
            vision += count * layer_activation_bytes(
                hidden=v.hidden_size, heads=v.num_attention_heads // tp, groups=v.num_query_groups // tp,
                head_dim=v.kv_channels, ffn=v.ffn_hidden_size // tp, tokens=patches, key_tokens=patches,
                norm_tokens=patches, runs=runs, recompute=layout.recompute, act=act, backend=backend)
        if layout.recompute == "full":
            vision += 4 * v.kv_channels // 2 * patches  # fp32 2-D rotary angles
        patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
        if act != PIXEL_BYTES:
            vision += act * patch_dim * patches  # the patch embedding keeps its input in the model dtype
        vision += (4 * v.hidden_size + 2 * act * v.hidden_size + 4) * patches  # merger RMSNorm
        vision += 2 * act * v.hidden_size // tp * patches  # merger fc1 output and GELU output (per 4 patches)
        inputs += PIXEL_BYTES * patch_dim * sum(costs)  # every CP rank receives all pixel values
    if stage == layout.pp - 1:
        answers = row.answer_tokens * b / cp
        logits = (4 * lm.hidden_size + 2 * act * lm.hidden_size + 4) * norm_tokens  # final RMSNorm
        logits += answers * (act * lm.hidden_size + 4 * config.vocab_size / tp)  # output input, fp32 softmax
    return Activations(language=language, vision=vision, logits=logits, inputs=inputs)


# -- the whole GPU ------------------------------------------------------------------------------


def transient_bytes(config: Qwen25VLConfig, layout: Layout, setup: Setup, row: Row, stage: int) -> float:
    """The largest temporary memory of backward on top of the kept activations.

    The biggest of: the output layer's backward (its weight gradient in the model dtype, before it
    is added to the fp32 gradient buffer, and the logits' gradient in the model dtype while the
    fp32 softmax it came from is freed); one language layer's and one vision layer's backward
    (about 4 ffn-wide gradients per token, plus the layer's recomputed activations under full
    recompute, or the recomputed core attention under selective recompute).
    """
    lm, v, tp, cp, b = config.language, config.vision, layout.tp, layout.cp, layout.micro_batch
    act, seq = setup.act_bytes, row.tokens * b
    local = seq / cp
    candidates = [0.0]
    if stage == layout.pp - 1:
        vocab = config.vocab_size / tp
        answers = row.answer_tokens * b / cp
        candidates.append(vocab * lm.hidden_size * act + max(0.0, answers * vocab * (act - 4)))
    groups = lm.num_query_groups or lm.num_attention_heads

    def layer(hidden, heads, n_groups, head_dim, ffn, tokens, key_tokens, norm_tokens, runs):
        kw = dict(hidden=hidden, heads=heads // tp, groups=n_groups // tp, head_dim=head_dim, ffn=ffn // tp,
                  tokens=tokens, key_tokens=key_tokens, norm_tokens=norm_tokens, runs=runs, act=act,
                  backend=setup.attention_backend)
        work = 4 * act * ffn // tp * tokens
        if layout.recompute == "full":
            work += layer_activation_bytes(recompute="none", **kw) - layer_activation_bytes(recompute="full", **kw)
        elif layout.recompute == "selective":
            work += layer_activation_bytes(recompute="none", **kw) - layer_activation_bytes(recompute="selective", **kw)
        return work

    if layout.stage_layers(lm.num_layers)[stage]:
        candidates.append(layer(lm.hidden_size, lm.num_attention_heads, groups, lm.kv_channels, lm.ffn_hidden_size,
                                local, seq if cp > 1 else local, local / tp if layout.sp else local,
                                attention_runs(row.segments) * b))
    if stage == 0 and row.image_grids:
        costs = [t * h * w for t, h, w in row.image_grids] * b
        patches = max(sum(costs[a:e]) for a, e in split_images_by_cost(costs, cp))
        candidates.append(layer(v.hidden_size, v.num_attention_heads, v.num_query_groups, v.kv_channels,
                                v.ffn_hidden_size, patches, patches, patches, 2))
    return max(candidates)


def comm_buffer_bytes(config: Qwen25VLConfig, layout: Layout, setup: Setup, row: Row) -> float:
    """Communication buffers: the sequence-parallel all-gather buffer, the gathered K/V before they are
    repeated to the query heads (CP), the pipeline's send and receive buffers."""
    lm, act = config.language, setup.act_bytes
    seq = row.tokens * layout.micro_batch
    local = seq / layout.cp
    out = 0.0
    if layout.sp:
        out += act * lm.hidden_size * local
    if layout.cp > 1:
        groups = (lm.num_query_groups or lm.num_attention_heads) // layout.tp
        out += 2 * act * groups * lm.kv_channels * seq
    if layout.pp > 1:
        out += 2 * act * lm.hidden_size * (local / layout.tp if layout.sp else local)
    return out


@dataclass(frozen=True)
class Allowances:
    """Memory the model of tensors does not see: allocator fragmentation and the CUDA/NCCL context."""

    fragmentation: float = 0.10   # fraction of activations and temporaries
    reserved_gib: float = 3.0     # CUDA context, NCCL buffers, cuBLAS/cuDNN workspaces


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory of one GPU of pipeline stage ``stage``, by part (bytes)."""

    stage: int
    states: ModelStates
    activations: Activations          # one micro-batch
    in_flight: int                    # micro-batches whose activations are alive at once (1F1B)
    transient: float                  # the largest temporary buffers of backward
    comm_buffers: float               # communication buffers
    fragmentation: float              # allocator fragmentation allowance
    reserved: float                   # CUDA context, NCCL and library workspaces

    @property
    def activation_total(self) -> float:
        """Kept activations of the micro-batches in flight (the device-side inputs once)."""
        return (self.activations.total - self.activations.inputs) * self.in_flight + self.activations.inputs

    @property
    def total(self) -> float:
        return (self.states.total + self.activation_total + self.transient + self.comm_buffers
                + self.fragmentation + self.reserved)


def estimate_memory(config: Qwen25VLConfig, layout: Layout, setup: Setup, row: Row, stage: int,
                    num_microbatches: int, allowances: Allowances = Allowances(),
                    states: ModelStates | None = None) -> MemoryEstimate:
    """Peak memory of one GPU of ``stage`` under the 1F1B schedule (stage ``i`` keeps the activations
    of ``min(pp - i, micro-batches)`` micro-batches); ``states``: :func:`model_states`, if known."""
    acts = activations(config, layout, setup, row, stage)
    in_flight = min(layout.pp - stage, num_microbatches)
    transient = transient_bytes(config, layout, setup, row, stage)
    kept = (acts.total - acts.inputs) * in_flight + transient
    return MemoryEstimate(
        stage=stage, states=states or model_states(config, layout, setup, stage), activations=acts, in_flight=in_flight,
        transient=transient, comm_buffers=comm_buffer_bytes(config, layout, setup, row),
        fragmentation=allowances.fragmentation * kept, reserved=allowances.reserved_gib * GIB)
