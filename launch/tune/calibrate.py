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

from launch.tune.presets import GpuSpec
from launch.tune.timing import Efficiency

# token x in x out: the shapes of transformer layers of hidden 256-1024 at a few thousand tokens
GEMM_SHAPES = ((2048, 512, 512), (2048, 512, 1536), (2048, 1536, 512), (4096, 256, 768), (4096, 768, 256))


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


def memory_bandwidth(repeats: int = 5, elements: int = 2 ** 24) -> float:
    """Bytes per second of an elementwise add (read two, write one) over tensors far larger than caches."""
    a, b = torch.randn(elements), torch.randn(elements)
    out = torch.empty_like(a)
    return 3 * 4 * elements / _best_seconds(lambda: torch.add(a, b, out=out), repeats)


def cpu_preset() -> tuple[GpuSpec, Efficiency]:
    """This machine as a one-device "GPU": its matmul rate is the peak (efficiency 1), attention's
    efficiency the measured SDPA rate over it."""
    gemm, attn, bandwidth = matmul_flops(), attention_flops(), memory_bandwidth()
    host = psutil.virtual_memory().total / 2 ** 30
    tflops = gemm / 1e12
    spec = GpuSpec(name=f"CPU ({torch.get_num_threads()} threads, measured)", memory_gib=host,
                   fp32_tflops=tflops, bf16_tflops=tflops, fp8_tflops=0.0, hbm_gbps=bandwidth / 1e9,
                   nvlink_gbps=bandwidth / 1e9, network_gbps=bandwidth / 1e9, host_memory_gib=host)
    return spec, Efficiency(gemm=1.0, attention=attn / gemm, network=1.0)
