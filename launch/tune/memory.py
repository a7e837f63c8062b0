"""Predicted device memory of one GPU: model states, activations, logits, buffers.

Model states are counted tensor by tensor from the architecture (:func:`stage_parameters`), in the
order Megatron-Core registers them, and laid out in Megatron DDP's gradient buffer the way
``_ParamAndGradBuffer`` does (64-element aligned parameters and DP-divisible buckets under the
distributed optimizer), so weights, gradients and the distributed optimizer's shard are exact.

Activations are what backward keeps, tensor by tensor, for this stack's layers (the hand count of
docs/model.md: RMSNorm keeping its input and rstd, the norm outputs kept by the next linear, RoPE's
cos/sin, SDPA's Q/K/V/output/logsumexp with grouped K/V (all-gathered to the stream's length under
CP with the ``torch`` backend, local with Transformer Engine's), the fused SwiGLU's input and output;
Transformer Engine's FP8 copies of GEMM inputs), under each recompute mode and selective module
set, for the vision tower on the first stage (the CP rank's share of the images) and the answer-only
logits on the last; plus the largest temporary buffers of backward.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace

import numpy as np

from launch.tune.layout import Layout
from launch.tune.workload import Row
from megatron_vlm.flops import patch_dim
from megatron_vlm.models.context_parallel import split_images_by_cost
from megatron_vlm.models.hf_config import VLArch

GIB = 2 ** 30
PIXEL_BYTES = 4  # the loader's pixel_values are float32


@dataclass(frozen=True)
class Setup:
    """Training settings that change memory and time but are not the parallel layout."""

    precision: str = "bf16"            # bf16 | fp8 (Transformer Engine GEMMs) | fp32 (CPU runs)
    attention_backend: str = "torch"   # torch | te
    transformer_impl: str = "local"    # local | te (Transformer Engine's linears and fused norms)
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
    def gemm_input_bytes(self) -> int:
        """Bytes per element a linear layer keeps of its input (Transformer Engine keeps FP8 copies)."""
        return 1 if self.precision == "fp8" else self.act_bytes

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
                  linear_bias: bool) -> list[Param]:
    """One transformer layer's local parameters, in Megatron's registration order (local spec):
    QKV always has a bias; the vision tower's other linears have one too, the language model's not."""
    qkv = (q_size + 2 * kv_size) // tp
    out = [Param(f"{prefix}.input_layernorm.weight", hidden),
           Param(f"{prefix}.self_attention.linear_proj.weight", hidden * q_size // tp)]
    if linear_bias:
        out.append(Param(f"{prefix}.self_attention.linear_proj.bias", hidden))
    out += [Param(f"{prefix}.self_attention.linear_qkv.weight", qkv * hidden),
            Param(f"{prefix}.self_attention.linear_qkv.bias", qkv),
            Param(f"{prefix}.pre_mlp_layernorm.weight", hidden),
            Param(f"{prefix}.mlp.linear_fc1.weight", 2 * ffn // tp * hidden)]  # SwiGLU: gate and up
    if linear_bias:
        out.append(Param(f"{prefix}.mlp.linear_fc1.bias", 2 * ffn // tp))
    out.append(Param(f"{prefix}.mlp.linear_fc2.weight", hidden * ffn // tp))
    if linear_bias:
        out.append(Param(f"{prefix}.mlp.linear_fc2.bias", hidden))
    return out


def stage_parameters(arch: VLArch, layout: Layout, stage: int) -> list[Param]:
    """The parameters one GPU of pipeline ``stage`` holds (TP-local sizes), in registration order."""
    tp = layout.tp
    first, last = stage == 0, stage == layout.pp - 1
    params: list[Param] = []
    if first:
        hidden = arch.vision_hidden_size
        params.append(Param("vision_model.patch_embed.proj.weight", hidden * patch_dim(arch)))
        for i in range(arch.vision_layers):
            params += _layer_params(f"vision_model.decoder.layers.{i}", hidden, hidden, hidden,
                                    arch.vision_ffn_hidden_size, tp, linear_bias=True)
        width = hidden * arch.spatial_merge_size ** 2
        params += [Param("vision_model.merger.layer_norm.weight", hidden),
                   Param("vision_model.merger.linear_fc1.weight", width * width // tp),
                   Param("vision_model.merger.linear_fc1.bias", width // tp),
                   Param("vision_model.merger.linear_fc2.weight", arch.out_hidden_size * width // tp),
                   Param("vision_model.merger.linear_fc2.bias", arch.out_hidden_size)]
    tied = arch.tie_word_embeddings
    embedding = arch.vocab_size // tp * arch.hidden_size
    if first:
        params.append(Param("language_model.embedding.word_embeddings.weight", embedding, shared_embedding=tied))
    for i in range(layout.stage_layers(arch.num_layers)[stage]):
        params += _layer_params(f"language_model.decoder.layers.{i}", arch.hidden_size, arch.num_heads * arch.head_dim,
                                arch.num_query_groups * arch.head_dim, arch.ffn_hidden_size, tp, linear_bias=False)
    if last:
        params.append(Param("language_model.decoder.final_layernorm.weight", arch.hidden_size))
        if not (tied and layout.pp == 1):  # tied with PP: the last stage keeps its own copy of the embedding
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


def model_states(arch: VLArch, layout: Layout, setup: Setup, stage: int) -> ModelStates:
    """Weights, gradient buffer and optimizer state of one GPU of ``stage`` (DP x CP shard the optimizer)."""
    params = stage_parameters(arch, layout, stage)
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


NORM_STATS = {"rmsnorm": 4, "layernorm": 8}  # fp32 bytes per token a norm keeps: rstd; mean and rstd


def layer_activation_bytes(*, hidden: int, heads: int, groups: int, head_dim: int, ffn: int, tokens: float,
                           key_tokens: float, norm_tokens: float, runs: int, recompute: str, setup: Setup,
                           modules: tuple[str, ...] = (), norm: str = "rmsnorm", gated: bool = True,
                           qk_norm: bool = False) -> float:
    """Bytes one transformer layer keeps for backward (docs/model.md's hand count, tensor by tensor).

    ``tokens``: query tokens on this GPU; ``key_tokens``: keys kept for backward (the whole stream under
    CP with the torch backend, which all-gathers K/V; Transformer Engine keeps the local ones);
    ``norm_tokens``: tokens the norms see (``tokens / TP`` with sequence parallelism; a linear keeps its
    input at that length and gathers it again in backward); ``heads``/``groups``/``ffn``: this TP rank's
    share; ``runs``: SDPA calls per layer (more than one adds a concatenated copy of the attention
    output); ``modules``: the selective recompute modules; ``norm``, ``gated`` (a SwiGLU MLP, else a plain
    one whose activation keeps its input) and ``qk_norm`` (RMSNorm on Q and K): the family's layer.
    """
    act, gemm_in = setup.act_bytes, setup.gemm_input_bytes
    q, kv = heads * head_dim, groups * head_dim
    if recompute == "full":
        return act * hidden * norm_tokens  # Megatron checkpoints each layer's input
    selective = set(modules) if recompute == "selective" else set()
    # each norm: its input and fp32 statistics (recomputed norms keep only the input, the checkpoint's)
    norms = 2 * (act * hidden + (0 if "layernorm" in selective else NORM_STATS[norm])) * norm_tokens
    norm_outputs = 0 if "layernorm" in selective else 2 * gemm_in * hidden * norm_tokens  # QKV's, fc1's input
    rotary = 4 * act * head_dim * tokens  # Megatron's unfused RoPE: cos and sin for Q and for K
    if qk_norm:  # Q before its RMSNorm (a copy), the fused QKV output K's is a view of, their rstd
        rotary += (act * (2 * heads + 2 * groups) * head_dim + 4 * (heads + groups)) * tokens
    if "core_attn" in selective:  # the checkpoint keeps rotated Q, K and the fused QKV output V is a view of
        # (with q/k norms that output is kept already, by K's norm)
        attention = act * (q + kv + (0 if qk_norm else q + 2 * kv) + q) * tokens
    elif setup.attention_backend == "te":  # Q, K, V local (ring / gather again in backward), output, softmax stats
        attention = act * (2 * q + 2 * kv) * tokens + 4 * heads * tokens
    else:  # SDPA: Q, grouped K/V at the keys' length, output, logsumexp; a copy of the output if concatenated
        attention = act * (2 * q * tokens + 2 * kv * key_tokens) + 4 * heads * tokens
        attention += act * q * tokens if runs > 1 else 0
    if gemm_in != act:
        attention += gemm_in * q * tokens  # linear_proj's FP8 copy of its input
    mlp = (2 if gated else 1) * act * ffn * tokens  # the activation's input (linear_fc1's output)
    if "act" not in selective:
        mlp += gemm_in * ffn * tokens  # its output, linear_fc2's input
    if "mlp" in selective:
        mlp = 0.0  # the checkpoint keeps only the MLP's input (the pre-MLP norm output, counted above)
    return norms + norm_outputs + rotary + attention + mlp


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


def _language_layer(arch: VLArch, layout: Layout, setup: Setup, row: Row, recompute: str,
                    modules: tuple[str, ...] = ()) -> float:
    """:func:`layer_activation_bytes` of one language layer for a micro-batch of rows like ``row`` (one stream)."""
    tp, cp = layout.tp, layout.cp
    seq = row.tokens * layout.micro_batch
    local = seq / cp
    gathered = cp > 1 and setup.attention_backend == "torch"
    runs = attention_runs(row.segments * layout.micro_batch) * (2 if cp > 1 else 1)  # CP: two chunks per sample
    return layer_activation_bytes(
        hidden=arch.hidden_size, heads=arch.num_heads // tp, groups=arch.num_query_groups // tp,
        head_dim=arch.head_dim, ffn=arch.ffn_hidden_size // tp, tokens=local, key_tokens=seq if gathered else local,
        norm_tokens=local / tp if layout.sp else local, runs=runs, recompute=recompute, setup=setup, modules=modules,
        qk_norm=arch.qk_layernorm)


def vision_setup(setup: Setup) -> Setup:
    """The vision tower's GEMMs stay in bf16 under FP8 (only the language model's config carries fp8)."""
    return replace(setup, precision="bf16") if setup.precision == "fp8" else setup


def cp_image_share(arch: VLArch, layout: Layout, row: Row) -> tuple[tuple[int, int, int], ...]:
    """The images the busiest CP rank encodes (the model's own split by patch count)."""
    grids = list(row.image_grids) * layout.micro_batch
    costs = [t * h * w for t, h, w in grids]
    a, e = max(split_images_by_cost(costs, layout.cp), key=lambda r: sum(costs[r[0]:r[1]]))
    return tuple(grids[a:e])


def _vision_layers(arch: VLArch, layout: Layout, setup: Setup, mine, recompute: str,
                   modules: tuple[str, ...] = ()) -> tuple[float, float]:
    """Activation bytes of all vision layers, and of the biggest one, for the images ``mine``."""
    tp = layout.tp
    patches = sum(t * h * w for t, h, w in mine)
    units = arch.window_size // arch.spatial_merge_size // arch.patch_size
    frame_runs, window_runs = vision_runs(tuple(mine), arch.spatial_merge_size, units)
    full = len(set(arch.fullatt_block_indexes) & set(range(arch.vision_layers)))
    total = biggest = 0.0
    for runs, count in ((frame_runs, full), (window_runs, arch.vision_layers - full)):
        one = layer_activation_bytes(
            hidden=arch.vision_hidden_size, heads=arch.vision_heads // tp, groups=arch.vision_heads // tp,
            head_dim=arch.vision_head_dim, ffn=arch.vision_ffn_hidden_size // tp, tokens=patches, key_tokens=patches,
            norm_tokens=patches, runs=runs, recompute=recompute, setup=vision_setup(setup), modules=modules,
            norm=arch.vision_norm, gated=arch.vision_mlp_matrices == 3)
        total += count * one
        biggest = max(biggest, one if count else 0.0)
    return total, biggest


def activations(arch: VLArch, layout: Layout, setup: Setup, row: Row, stage: int) -> Activations:
    """What one micro-batch of ``layout.micro_batch`` rows like ``row`` keeps on one GPU of ``stage``."""
    tp, cp, b, act = layout.tp, layout.cp, layout.micro_batch, setup.act_bytes
    seq = row.tokens * b
    local = seq / cp
    norm_tokens = local / tp if layout.sp else local
    modules = layout.recompute_modules
    stage_layers = layout.stage_layers(arch.num_layers)
    language = _language_layer(arch, layout, setup, row, layout.recompute, modules) * stage_layers[stage]
    slots = min(stage_layers[stage], max(0, arch.deepstack_layers - sum(stage_layers[:stage])))
    if slots:  # DeepStack features ride as extra columns of the stage's input, which its first layer keeps whole
        language += act * arch.hidden_size * slots * norm_tokens
    if layout.recompute == "full":
        language += 4 * arch.head_dim * local  # the fp32 rotary angles, kept for the recomputation
    vision = logits = 0.0
    inputs = 44 * seq  # int64 input ids, labels and 3 mRoPE position rows; the fp32 loss mask
    if stage == 0 and row.image_grids:
        mine = cp_image_share(arch, layout, row)
        patches = sum(t * h * w for t, h, w in mine)
        vision, _ = _vision_layers(arch, layout, setup, mine, layout.recompute, modules)
        hidden = arch.vision_hidden_size
        if layout.recompute == "full":
            vision += 4 * arch.vision_head_dim // 2 * patches  # fp32 2-D rotary angles
        if act != PIXEL_BYTES:
            vision += act * patch_dim(arch) * patches  # the patch embedding keeps its input in the model dtype
        stats = NORM_STATS[arch.vision_norm]
        vision += (2 * act * hidden + stats) * patches  # merger norm: its input, statistics, output (fc1's input)
        vision += 2 * act * hidden // tp * patches  # merger fc1 output and GELU output (one row per 4 patches)
        # DeepStack mergers (norm over 4 patches' width: input shared with the next layer's, output, statistics)
        vision += arch.deepstack_layers * (act * hidden + 2 * act * hidden // tp + stats / 4) * patches
        if arch.vision_position_table:  # interpolation: 4 int64 indices and 4 fp32 weights per patch
            vision += 48 * patches
        inputs += PIXEL_BYTES * patch_dim(arch) * patches  # this CP rank's images (gathered over its TP group)
    if stage == layout.pp - 1:
        answers = row.answer_tokens * b / cp
        logits = (act * arch.hidden_size + 4) * norm_tokens  # final RMSNorm: its input and rstd
        logits += answers * (act * arch.hidden_size + 4 * arch.vocab_size / tp)  # output-layer input, fp32 softmax
    return Activations(language=language, vision=vision, logits=logits, inputs=inputs)


# -- the whole GPU ------------------------------------------------------------------------------


def transient_bytes(arch: VLArch, layout: Layout, setup: Setup, row: Row, stage: int) -> float:
    """The largest temporary memory of backward on top of the kept activations.

    The biggest of: the output layer's backward (its weight gradient in the model dtype, before it
    is added to the fp32 gradient buffer, and the logits' gradient in the model dtype while the
    fp32 softmax it came from is freed); one language layer's and one vision layer's backward
    (4 ffn-wide gradients per token; under recompute, the recomputed part of the layer).
    """
    tp, cp, b, act = layout.tp, layout.cp, layout.micro_batch, setup.act_bytes
    candidates = [0.0]
    if stage == layout.pp - 1:
        vocab = arch.vocab_size / tp
        answers = row.answer_tokens * b / cp
        candidates.append(vocab * arch.hidden_size * act + max(0.0, answers * vocab * (act - 4)))

    def layer(plain: float, kept: float, ffn: int, q_size: int, tokens: float) -> float:
        """Backward of one layer: its ffn-wide gradients while all its activations are still alive; under
        full recompute the recomputed layer and the first of those gradients (the rest replace activations
        already freed); under selective recompute, in attention's backward, the recomputed attention and
        the gradients of Q, K and V."""
        work = 4 * act * ffn // tp * tokens
        if layout.recompute == "full":
            return plain - kept + act * ffn // tp * tokens
        if layout.recompute == "selective":
            return max(work, plain - kept + 3 * act * q_size // tp * tokens)
        return work

    if layout.stage_layers(arch.num_layers)[stage]:
        local = row.tokens * b / cp
        candidates.append(layer(_language_layer(arch, layout, setup, row, "none"),
                                _language_layer(arch, layout, setup, row, layout.recompute, layout.recompute_modules),
                                arch.ffn_hidden_size, arch.num_heads * arch.head_dim, local))
    if stage == 0 and row.image_grids:
        mine = cp_image_share(arch, layout, row)
        patches = sum(t * h * w for t, h, w in mine)
        _, plain = _vision_layers(arch, layout, setup, mine, "none")
        _, kept = _vision_layers(arch, layout, setup, mine, layout.recompute, layout.recompute_modules)
        candidates.append(layer(plain, kept, arch.vision_ffn_hidden_size, arch.vision_hidden_size, patches))
    return max(candidates)


def comm_buffer_bytes(arch: VLArch, layout: Layout, setup: Setup, row: Row) -> float:
    """Communication buffers: the sequence-parallel all-gather buffer, the gathered K/V before they are
    repeated to the query heads (CP), the pipeline's send and receive buffers."""
    act, hidden = setup.act_bytes, arch.hidden_size
    seq = row.tokens * layout.micro_batch
    local = seq / layout.cp
    out = 0.0
    if layout.sp:
        out += act * hidden * local
    if layout.cp > 1:
        out += 2 * act * arch.num_query_groups // layout.tp * arch.head_dim * seq
    if layout.pp > 1:
        out += 2 * act * hidden * (local / layout.tp if layout.sp else local)
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


def estimate_memory(arch: VLArch, layout: Layout, setup: Setup, row: Row, stage: int,
                    num_microbatches: int, allowances: Allowances = Allowances(),
                    states: ModelStates | None = None) -> MemoryEstimate:
    """Peak memory of one GPU of ``stage`` under the 1F1B schedule (stage ``i`` keeps the activations
    of ``min(pp - i, micro-batches)`` micro-batches); ``states``: :func:`model_states`, if known."""
    acts = activations(arch, layout, setup, row, stage)
    in_flight = min(layout.pp - stage, num_microbatches)
    transient = transient_bytes(arch, layout, setup, row, stage)
    kept = (acts.total - acts.inputs) * in_flight + transient
    return MemoryEstimate(
        stage=stage, states=states or model_states(arch, layout, setup, stage), activations=acts, in_flight=in_flight,
        transient=transient, comm_buffers=comm_buffer_bytes(arch, layout, setup, row),
        fragmentation=allowances.fragmentation * kept, reserved=allowances.reserved_gib * GIB)
