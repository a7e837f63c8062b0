"""The model of a training run: this rank's chunk(s) of the family's model, frozen parts, Megatron DDP.

Each pipeline rank builds its stage (one chunk, or ``vpp`` chunks for the interleaved schedule); the
first stage also holds the vision tower. Parts that do not train are frozen before wrapping, so
Megatron DDP leaves them out of its gradient buffers (no reduction) and the optimizer never sees
them. The language model's ``TransformerConfig`` carries what Megatron-Core's schedules read:
per-token loss normalisation, variable sequence lengths under PP, the DDP hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)

from megatron_vlm.model_builder import build_vlm
from megatron_vlm.models.config import VLModelConfig
from megatron_vlm.models.hf_config import VLArch
from megatron_vlm.models.vlm import VisionLanguageModel
from megatron_vlm.runtime import use_cuda
from training.config import TrainConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}


@dataclass
class ModelParts:
    """This rank's model chunks (DDP-wrapped) and the config they were built from."""

    chunks: list[DistributedDataParallel]
    config: VLModelConfig

    @property
    def first_stage(self) -> bool:
        return ps.is_pipeline_first_stage(ignore_virtual=True)

    @property
    def last_stage(self) -> bool:
        return ps.is_pipeline_last_stage(ignore_virtual=True)

    def unwrapped(self) -> list[VisionLanguageModel]:
        return [chunk.module for chunk in self.chunks]


def model_options(config: TrainConfig) -> dict:
    """The family config builder's keywords of the run's model (``megatron_vlm.model_builder.build_vlm``)."""
    extra = {}
    if config.train.precision == "fp8":
        extra.update(fp8="hybrid", fp8_recipe="delayed")
    m = config.model
    return dict(attention_backend=m.attention_backend, transformer_impl=m.transformer_impl,
                params_dtype=DTYPES[config.train.precision], rope=m.rope, recompute=m.recompute,
                recompute_modules=m.recompute_modules, calculate_per_token_loss=True, **extra)


def _freeze(model: VisionLanguageModel, config: TrainConfig) -> None:
    """``model.train_language`` / ``train_merger`` (the patch mergers, DeepStack's included) / ``train_vision``
    (the rest of the tower: patch and position embeddings, layers) set which parameters train."""
    for name, param in model.named_parameters():
        if name.startswith("language_model."):
            train = config.model.train_language
        elif name.startswith(("vision_model.merger.", "vision_model.deepstack_mergers.")):
            train = config.model.train_merger
        else:
            train = config.model.train_vision
        param.requires_grad_(train)


def build_model(config: TrainConfig, arch: VLArch, load: str | Path | None = None) -> ModelParts:
    """This rank's chunks of the run's model (``megatron_vlm.model_builder.build_vlm``: the runtime started with
    ``config.parallel`` and ``train.seed``, the weights of the Megatron checkpoint ``load`` if given), frozen
    and wrapped in Megatron DDP; the schedule hooks set on the language config."""
    built = build_vlm(arch, config.parallel, checkpoint=load, seed=config.train.seed, **model_options(config))
    cfg, chunks = built.config, built.chunks
    for model in chunks:
        _freeze(model, config)
    gpu = use_cuda()
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=gpu,
        use_distributed_optimizer=gpu and config.optimizer.distributed_optimizer,
        bucket_size=None if gpu else 10**12)
    wrapped = [DistributedDataParallel(cfg.language, ddp_config, model,
                                       disable_bucketing=(i > 0)) for i, model in enumerate(chunks)]
    lang = cfg.language
    lang.no_sync_func = [w.no_sync for w in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    lang.finalize_model_grads_func = finalize_model_grads
    return ModelParts(wrapped, cfg)


def trainable_parameters(parts: ModelParts) -> int:
    """Parameters of this rank that the optimizer updates."""
    return sum(p.numel() for chunk in parts.chunks for p in chunk.module.parameters() if p.requires_grad)
