"""A "GPU" preset for this machine's CPU, measured: matmul and attention FLOP/s, memory bandwidth.

``longvlm tune --gpu cpu`` plans with it, so the cost model can be checked against real CPU
training steps (``scripts/bench_tune.py``). The figures are fp32 (CPU runs train in fp32) and per
CPU-second of this process (``time.process_time``), so other work on the machine does not skew
them; with ``torch.set_num_threads(1)`` that is one core.
"""

from __future__ import annotations

import statistics
import time

import psutil
import torch
import torch.nn.functional as F

from launch.tune.timing import Efficiency
from megatron_vlm.hardware import GpuSpec

# token x in x out: the shapes of transformer layers of hidden 256-512 at 512-2048 tokens
GEMM_SHAPES = tuple((tokens, a, b) for tokens in (512, 2048) for a, b in ((512, 1536), (1536, 512), (256, 768),
                                                                        (768, 256), (512, 512)))


def _best_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def matmul_flops(repeats: int = 5) -> float:
    """fp32 matmul FLOP/s: the median over ``GEMM_SHAPES`` of each shape's best run."""
    rates = []
    for m, k, n in GEMM_SHAPES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        rates.append(2 * m * k * n / _best_seconds(lambda a=a, b=b: a @ b, repeats))
    return statistics.median(rates)


def attention_flops(repeats: int = 3, heads: int = 4, seq: int = 1024, head_dim: int = 64) -> float:
    """Causal SDPA forward + backward FLOP/s (counted as :mod:`megatron_vlm.flops` counts them)."""
    q, k, v = (torch.randn(1, heads, seq, head_dim, requires_grad=True) for _ in range(3))

    def step():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    flops = 3 * 4 * heads * head_dim * seq * (seq + 1) // 2
    return flops / _best_seconds(step, repeats)


def memory_bandwidth(traffic: float, repeats: int = 3, tokens: int = 4096, hidden: int = 512) -> float:
    """Bytes per second of a transformer layer's memory-bound part, as the time model counts them:
    ``traffic`` x the bytes autograd keeps, over the time of forward + backward of Qwen's fp32 RMSNorm,
    the SwiGLU product and the residual add (no matmuls) on ``tokens x hidden`` activations."""
    x = torch.randn(tokens, hidden, requires_grad=True)
    gate, up = (torch.randn(tokens, 3 * hidden, requires_grad=True) for _ in range(2))
    weight = torch.ones(hidden, requires_grad=True)
    saved: dict[int, int] = {}

    def pack(t):
        saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    def step():
        normed = weight * (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6))
        mlp = F.silu(gate) * (up + 0.0)
        (normed + x).sum().backward(retain_graph=False)
        mlp.sum().backward()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    inputs = {t.untyped_storage().data_ptr() for t in (x, gate, up, weight)}
    kept = sum(n for ptr, n in saved.items() if ptr not in inputs)
    return traffic * kept / _best_seconds(step, repeats)


def optimizer_seconds_per_parameter(repeats: int = 3, elements: int = 2 ** 23) -> float:
    """An Adam step (torch's AdamW, as Megatron-Core uses without Apex/TE) plus a gradient-norm pass."""
    param = torch.nn.Parameter(torch.randn(elements))
    param.grad = torch.randn(elements)
    optimizer = torch.optim.AdamW([param], lr=1e-5)

    def step():
        torch.nn.utils.clip_grad_norm_([param], 1.0)
        optimizer.step()

    return _best_seconds(step, repeats) / elements


def cpu_preset() -> tuple[GpuSpec, Efficiency]:
    """This machine as a one-device "GPU": its matmul rate is the peak (efficiency 1), attention's
    efficiency the measured SDPA rate over it, the optimizer's bytes per parameter what its Adam
    step takes at the measured bandwidth."""
    traffic = Efficiency.traffic
    gemm, attn, bandwidth = matmul_flops(), attention_flops(), memory_bandwidth(traffic)
    optimizer = optimizer_seconds_per_parameter() * bandwidth
    host = psutil.virtual_memory().total / 2 ** 30
    tflops = gemm / 1e12
    spec = GpuSpec(name=f"CPU ({torch.get_num_threads()} threads, measured)", memory_gib=host,
                   fp32_tflops=tflops, bf16_tflops=tflops, fp8_tflops=0.0, hbm_gbps=bandwidth / 1e9,
                   nvlink_gbps=bandwidth / 1e9, network_gbps=bandwidth / 1e9, host_memory_gib=host)
    return spec, Efficiency(gemm=1.0, attention=attn / gemm, network=1.0, traffic=traffic, optimizer_bytes=optimizer)
