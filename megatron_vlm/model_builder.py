"""The model of a checkpoint for a layout, built the one way every stage builds it.

:func:`build_vlm` starts the runtime (``torch.distributed`` and Megatron-Core's groups for the layout;
nothing is rebuilt when they already run with it), reads the Hugging Face config through the family
registry (a Megatron checkpoint's recorded ``hf_config`` when no config is given), builds this rank's
chunks (:func:`build_chunks`) and loads the checkpoint's weights into them. Training wraps the chunks in
Megatron DDP (``training.model``); ``longvlm eval --backend megatron``, ``longvlm convert verify`` and the
benchmark scripts use them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_vlm.formats.checkpoint import MegatronCheckpoint, load_into_model
from megatron_vlm.models.config import VLModelConfig
from megatron_vlm.models.hf_config import VLArch
from megatron_vlm.models.registry import read_arch
from megatron_vlm.parallel import ParallelLayout


@dataclass
class BuiltVLM:
    """This rank's model chunks, the config they were built from, and the checkpoint loaded into them (if any)."""

    config: VLModelConfig
    chunks: list  # of the family's VisionLanguageModel: one, or ``vpp`` for the interleaved schedule
    checkpoint: MegatronCheckpoint | None = None

    @property
    def model(self):
        """The one chunk (no interleaved schedule)."""
        if len(self.chunks) != 1:
            raise ValueError(f"{len(self.chunks)} model chunks (parallel.vpp): use .chunks")
        return self.chunks[0]


def build_chunks(cfg: VLModelConfig) -> list:
    """This pipeline rank's model chunks on its device: one, or ``vpp`` for the interleaved schedule."""
    from megatron.core import parallel_state as ps

    from megatron_vlm.runtime import device

    vpp = cfg.layout.vpp
    chunks = []
    for vp_stage in range(vpp) if vpp else [None]:
        first = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        last = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        chunks.append(cfg.arch.family.model_class(cfg, pre_process=first, post_process=last,
                                                  vp_stage=vp_stage).to(device()))
    return chunks


def build_vlm(source: str | Path | dict[str, Any] | VLArch | None = None, layout: ParallelLayout | None = None, *,
              checkpoint: MegatronCheckpoint | str | Path | None = None, iteration: str | None = None,
              seed: int = 1234, device: str | None = None, environ: dict[str, str] | None = None,
              **config_kwargs: Any) -> BuiltVLM:
    """Build (and load) the model of ``checkpoint`` and/or ``source`` for ``layout`` on this rank.

    ``source``: the Hugging Face config (``config.json``, its folder, a dict or a parsed arch; default: the
    checkpoint's recorded ``hf_config``); ``checkpoint``: a Megatron checkpoint (opened at ``iteration``) whose
    weights are loaded, or ``None`` for freshly initialised weights. ``seed``, ``device`` and ``environ`` start
    the runtime (``megatron_vlm.runtime.initialize_distributed``); ``config_kwargs`` go to the family's
    config builder (``params_dtype``, ``attention_backend``, ``transformer_impl``, ``rope``, ``recompute``,
    extra language ``TransformerConfig`` fields).
    """
    from megatron_vlm import runtime

    ckpt = checkpoint
    if ckpt is not None and not isinstance(ckpt, MegatronCheckpoint):
        ckpt = MegatronCheckpoint.open(ckpt, iteration)
    if source is None:
        if ckpt is None:
            raise ValueError("build_vlm needs a Hugging Face config (source) or a Megatron checkpoint")
        source = ckpt.meta["hf_config"]
    runtime.initialize_distributed(layout, seed, environ=environ, device=device)
    arch = source if isinstance(source, VLArch) else read_arch(
        source, name=str(ckpt.iter_dir) if ckpt is not None and isinstance(source, dict) else None)
    config = arch.family.config_from_hf(arch, layout=layout or ParallelLayout(), **config_kwargs)
    chunks = build_chunks(config)
    if ckpt is not None:
        load_into_model(chunks, ckpt)
    return BuiltVLM(config, chunks, ckpt)
