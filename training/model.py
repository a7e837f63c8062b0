"""The model of a training run: this rank's chunk(s) of the family's model, frozen parts, Megatron DDP.

Each pipeline rank builds its stage (one chunk, or ``vpp`` chunks for the interleaved schedule); the
first stage also holds the vision tower. Parts that do not train are frozen before wrapping, so
Megatron DDP leaves them out of its gradient buffers (no reduction) and the optimizer never sees
them. The language model's ``TransformerConfig`` carries what Megatron-Core's schedules read:
per-token loss normalisation, variable sequence lengths under PP, the DDP hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)

from megatron_vlm.models.config import VLModelConfig
from megatron_vlm.models.hf_config import VLArch
from megatron_vlm.models.vlm import VisionLanguageModel
from megatron_vlm.runtime import device, use_cuda
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


def model_config(config: TrainConfig, arch: VLArch) -> VLModelConfig:
    """The Megatron configs of the run's model (its family's, shapes from ``arch``, split from ``config.parallel``)."""
    extra = {}
    if config.train.precision == "fp8":
        extra.update(fp8="hybrid", fp8_recipe="delayed")
    m = config.model
    return arch.family.config_from_hf(
        arch, layout=config.parallel, attention_backend=m.attention_backend, transformer_impl=m.transformer_impl,
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


def build_chunks(cfg: VLModelConfig) -> list[VisionLanguageModel]:
    """This pipeline rank's model chunks on its device: one, or ``vpp`` for the interleaved schedule."""
    vpp = cfg.layout.vpp
    chunks = []
    for vp_stage in range(vpp) if vpp else [None]:
        first = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        last = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        chunks.append(cfg.arch.family.model_class(cfg, pre_process=first, post_process=last,
                                                  vp_stage=vp_stage).to(device()))
    return chunks


def build_model(config: TrainConfig, arch: VLArch) -> ModelParts:
    """Build, freeze and wrap this rank's chunks; set the schedule hooks on the language config."""
    cfg = model_config(config, arch)
    chunks = build_chunks(cfg)
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
