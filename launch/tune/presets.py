"""GPU presets (memory, dense peak FLOPs, link bandwidths) and the Qwen2.5-VL model presets.

GPU figures are the vendors' dense (no sparsity) peaks for the SXM / HGX parts: what ``--gpu NAME``
plans with. ``memory_gib`` is the total the driver reports (``nvidia-smi``); bandwidths are per GPU
and per direction (NVLink: half the quoted bidirectional figure; network: one NIC per GPU).
Anything can be overridden on the command line (``--gpu-memory-gib``, ``--peak-tflops``, ...).

Model presets are the hub's ``config.json`` of each Qwen2.5-VL size (transformers 4.x flat
layout); they are parsed by :func:`megatron_vlm.models.config.qwen25vl_config_from_hf` like any
checkpoint's config.
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


def _qwen25vl_hub_config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                         vocab: int, tied: bool) -> dict:
    """The hub ``config.json`` of a Qwen2.5-VL size (all sizes share the vision tower)."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "hidden_act": "silu", "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": 128000, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": tied,
        "vocab_size": vocab, "image_token_id": 151655, "video_token_id": 151656,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653, "torch_dtype": "bfloat16",
        "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                          "num_heads": 16, "in_chans": 3, "out_hidden_size": hidden, "patch_size": 14,
                          "spatial_merge_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                          "temporal_patch_size": 2},
    }


MODELS: dict[str, dict] = {
    "qwen2.5-vl-3b": _qwen25vl_hub_config(2048, 11008, 36, 16, 2, 151936, tied=True),
    "qwen2.5-vl-7b": _qwen25vl_hub_config(3584, 18944, 28, 28, 4, 152064, tied=False),
    "qwen2.5-vl-32b": _qwen25vl_hub_config(5120, 27648, 64, 40, 8, 152064, tied=False),
    "qwen2.5-vl-72b": _qwen25vl_hub_config(8192, 29568, 80, 64, 8, 152064, tied=False),
}
