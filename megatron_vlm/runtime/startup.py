"""Start-up of ``torch.distributed`` and Megatron-Core's model-parallel groups."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from datetime import timedelta

import numpy
import torch

from megatron_vlm.parallel import ParallelLayout
from megatron_vlm.runtime.compat import apply_megatron_compat
from megatron_vlm.runtime.cpu_shims import apply_cpu_shims
from megatron_vlm.runtime.launcher import DistEnv, read_dist_env
from megatron_vlm.runtime.placement import settle_placement, unsettle_placement, use_cuda

_LAYOUT: tuple | None = None


def initialize_distributed(
    layout: ParallelLayout | None = None,
    seed: int = 1234,
    *,
    timeout_minutes: int = 30,
    environ: dict[str, str] | None = None,
    device: str | None = None,
) -> DistEnv:
    """Start torch.distributed and Megatron-Core's model-parallel groups, and seed the RNGs.

    ``layout`` gives the model-parallel sizes (default: none; data parallel over the whole world).
    Reads the launcher's variables (:func:`read_dist_env`) and settles the device
    (:mod:`megatron_vlm.runtime.placement`): NCCL and ``cuda:LOCAL_RANK`` when this process has a GPU
    of its own, else gloo and the CPU shims; ``device="cpu"`` pins the CPU for this process (default:
    ``LONGVLM_DEVICE``, else ``auto``). Seeds like Megatron-LM: ``random``, ``numpy``, ``torch`` and
    ``model_parallel_cuda_manual_seed`` with ``seed + 100 * pipeline_rank``. Calling it again with
    the same layout does nothing; with another layout it rebuilds the groups and reseeds (the
    process group stays).
    """
    global _LAYOUT
    from megatron.core import parallel_state, tensor_parallel

    env = read_dist_env(environ)
    apply_megatron_compat()
    backend = settle_placement(env, device).backend
    if torch.distributed.is_initialized() and torch.distributed.get_backend() != backend:
        raise RuntimeError(f"torch.distributed already runs {torch.distributed.get_backend()}, this process "
                           f"now computes with {backend}: call runtime.destroy() first")
    if not torch.distributed.is_initialized():
        timeout = timedelta(minutes=timeout_minutes)
        if env.world_size == 1:
            torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(),
                                                 rank=0, world_size=1, timeout=timeout)
        else:
            torch.distributed.init_process_group(
                backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                rank=env.rank, world_size=env.world_size, timeout=timeout)

    layout = layout or ParallelLayout()
    layout.data_parallel_size(env.world_size)  # a clear error before Megatron's assertion
    if _LAYOUT == (layout, seed) and parallel_state.model_parallel_is_initialized():
        return env
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp,
        context_parallel_size=layout.cp,
        distributed_timeout_minutes=timeout_minutes,
    )
    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    numpy.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)
    _LAYOUT = (layout, seed)
    return env


def destroy() -> None:
    """Tear down the model-parallel groups and the process group (tests; end of a job)."""
    global _LAYOUT
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _LAYOUT = None
    unsettle_placement()


@contextlib.contextmanager
def process_group(device: str | None = None) -> Iterator[None]:
    """``torch.distributed`` as ``dist_checkpointing`` needs it: the caller's group if initialized,
    else a one-process group (``megatron_vlm.runtime``; ``device`` as for :func:`initialize_distributed`)
    for the block; the caller's random-number state is left as it was."""
    import torch.distributed as dist

    if dist.is_initialized():
        if not use_cuda():
            apply_cpu_shims()
        yield
        return
    rng = torch.get_rng_state()
    initialize_distributed(environ={}, device=device)  # one process, whatever launcher variables are set
    try:
        yield
    finally:
        destroy()
        torch.set_rng_state(rng)
