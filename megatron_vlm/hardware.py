"""Accelerators as throughput and memory figures: the presets ``longvlm tune`` plans with and the
trainer's MFU divides by.

Figures are the vendors' dense (no sparsity) peaks for the SXM / HGX parts. ``memory_gib`` is the
total the driver reports (``nvidia-smi``); bandwidths are per GPU and per direction (NVLink: half the
quoted bidirectional figure; network: one NIC per GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator and its node, as the cost model sees it."""

    name: str
    memory_gib: float         # device memory the driver reports
    fp32_tflops: float        # dense fp32 matmul peak (TF32 tensor cores on GPUs; CPU runs train in fp32)
    bf16_tflops: float        # dense bf16 matmul peak
    fp8_tflops: float         # dense fp8 matmul peak (0: no fp8)
    hbm_gbps: float           # device memory bandwidth, GB/s
    nvlink_gbps: float        # GPU-to-GPU inside a node, GB/s per direction
    network_gbps: float       # between nodes, GB/s per GPU per direction
    host_memory_gib: float    # CPU memory of one node (typical DGX/HGX value)

    def peak_flops(self, precision: str) -> float:
        """Dense matmul FLOP/s at ``precision`` (``fp32``, ``bf16`` or ``fp8``)."""
        return 1e12 * {"fp32": self.fp32_tflops, "bf16": self.bf16_tflops, "fp8": self.fp8_tflops}[precision]

    def with_overrides(self, **values: float | None) -> GpuSpec:
        """This spec with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("H100 SXM 80GB", 79.6, 494.7, 989.4, 1978.9, 3350, 450, 50, 2048),
    "h200": GpuSpec("H200 SXM 141GB", 140.4, 494.7, 989.4, 1978.9, 4800, 450, 50, 2048),
    "a100": GpuSpec("A100 SXM 80GB", 80.0, 156.0, 312.0, 0.0, 2039, 300, 25, 1024),
    "h20": GpuSpec("H20 96GB", 95.6, 74.0, 148.0, 296.0, 4000, 450, 50, 2048),
    "b200": GpuSpec("B200 SXM 180GB", 179.1, 1100.0, 2250.0, 4500.0, 8000, 900, 50, 2048),
}


def gpu_preset(device_name: str) -> GpuSpec | None:
    """The preset of a device as ``torch.cuda.get_device_name`` names it ("NVIDIA H100 80GB HBM3"), or
    ``None`` for one not listed."""
    words = device_name.lower().replace("-", " ").split()
    return next((spec for key, spec in GPUS.items() if key in words), None)
