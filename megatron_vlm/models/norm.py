"""RMSNorm for the ``torch`` backend: Qwen2.5-VL's arithmetic, usable with sequence parallelism."""

from __future__ import annotations

import torch


class RMSNorm(torch.nn.Module):
    """``weight * (x / rms(x))`` computed in fp32 and cast back, as Qwen2.5-VL does.

    Megatron-Core's ``WrappedTorchNorm`` refuses sequence parallelism; this one marks its weight
    ``sequence_parallel`` so Megatron's grad finalization all-reduces it over the TP group.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **_unused):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = bool(config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)
