"""Start-up of ``torch.distributed`` and Megatron-Core's model-parallel groups; the compute device."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from datetime import timedelta

import numpy
import torch

from megatron_vlm.parallel import ParallelLayout
from megatron_vlm.runtime.cpu_shims import apply_cpu_shims
from megatron_vlm.runtime.launcher import DistEnv, read_dist_env


def device() -> torch.device:
    """The device this process computes on: its CUDA device on GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_LAYOUT: tuple | None = None


def initialize_distributed(
    layout: ParallelLayout | None = None,
    seed: int = 1234,
    *,
    timeout_minutes: int = 30,
    environ: dict[str, str] | None = None,
) -> DistEnv:
    """Start torch.distributed and Megatron-Core's model-parallel groups, and seed the RNGs.

    ``layout`` gives the model-parallel sizes (default: none; data parallel over the whole world).
    Reads the launcher's variables (:func:`read_dist_env`); NCCL and ``cuda:LOCAL_RANK`` on GPU,
    gloo and the CPU shims without CUDA. Seeds like Megatron-LM: ``random``, ``numpy``, ``torch`` and
    ``model_parallel_cuda_manual_seed`` with ``seed + 100 * pipeline_rank``. Calling it again with
    the same layout does nothing; with another layout it rebuilds the groups and reseeds (the
    process group stays).
    """
    global _LAYOUT
    from megatron.core import parallel_state, tensor_parallel

    env = read_dist_env(environ)
    cuda = torch.cuda.is_available()
    if not cuda:
        apply_cpu_shims()
    if not torch.distributed.is_initialized():
        backend = "nccl" if cuda else "gloo"
        timeout = timedelta(minutes=timeout_minutes)
        if cuda:
            torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
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


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """``torch.distributed`` as ``dist_checkpointing`` needs it: the caller's group if initialized,
    else a one-process group (``megatron_vlm.runtime``, with its CPU shims) for the block; the
    caller's random-number state is left as it was."""
    import torch.distributed as dist

    if dist.is_initialized():
        apply_cpu_shims()
        yield
        return
    rng = torch.get_rng_state()
    initialize_distributed(environ={})  # one process, whatever launcher variables are set
    try:
        yield
    finally:
        destroy()
        torch.set_rng_state(rng)
