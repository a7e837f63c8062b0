"""RMSNorm for the local (non-TE) layers: Qwen's arithmetic, usable with sequence parallelism, lean.

Qwen computes ``weight * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(x.dtype)``. Left to
autograd that keeps an fp32 copy of the input and the normalized output for backward; here an
autograd function keeps only the input (in its own dtype) and one fp32 ``rstd`` per token and
recomputes the rest in backward.
"""

from __future__ import annotations

import torch


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad.float() * xhat.to(x.dtype).float()).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            g = (grad * weight).to(x.dtype).float()  # the gradient reaching the cast-back normalized input
            grad_x = (rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_weight, None


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
        return _RMSNormFunction.apply(x, self.weight, self.eps)
