"""Optimizer and learning-rate schedule: Megatron-Core's ``get_megatron_optimizer`` and ``OptimizerParamScheduler``.

AdamW with decoupled weight decay and global-norm clipping. On GPU in bf16 the distributed optimizer
(fp32 main weights and Adam state sharded over data-parallel ranks); on CPU the plain fp32 one.
Schedules: ``cosine``, ``linear`` or ``constant`` after a linear warmup, or ``wsd``
(warmup-stable-decay: constant, then a cosine decay over the last ``wsd_decay_fraction``), all to
``min_lr``; one scheduler step per optimizer step.
"""

from __future__ import annotations

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from training.config import OptimizerSettings
from training.model import ModelParts

_DECAY_STYLES = {"cosine": "cosine", "linear": "linear", "constant": "constant", "wsd": "WSD"}


def build_optimizer(settings: OptimizerSettings, parts: ModelParts, precision: str):
    """The Megatron optimizer over the trainable parameters of ``parts``."""
    gpu = torch.cuda.is_available()
    config = OptimizerConfig(
        optimizer="adam", lr=settings.lr, min_lr=settings.min_lr, weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1, adam_beta2=settings.adam_beta2, adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad, bf16=precision in ("bf16", "fp8"), params_dtype=parts.config.language.params_dtype,
        use_distributed_optimizer=gpu and settings.distributed_optimizer)
    optimizer = get_megatron_optimizer(config, parts.chunks)
    parts.config.language.grad_scale_func = optimizer.scale_loss
    return optimizer


def build_scheduler(settings: OptimizerSettings, optimizer, steps: int) -> OptimizerParamScheduler:
    """Warmup then decay over ``steps`` optimizer steps."""
    warmup = int(round(settings.warmup_fraction * steps))
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=settings.lr, min_lr=settings.min_lr, lr_warmup_steps=warmup,
        lr_decay_steps=steps, lr_decay_style=_DECAY_STYLES[settings.schedule],
        start_wd=settings.weight_decay, end_wd=settings.weight_decay, wd_incr_steps=steps, wd_incr_style="constant",
        wsd_decay_steps=max(1, int(round(settings.wsd_decay_fraction * steps))) if settings.schedule == "wsd" else None,
        lr_wsd_decay_style="cosine" if settings.schedule == "wsd" else None,
        use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True)
