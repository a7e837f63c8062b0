"""Where this process computes: its own GPU, or the CPU. Decided here and nowhere else.

A process computes on CUDA when torch sees a GPU, every process of the job on this node can have
a GPU of its own (``local_world_size <= torch.cuda.device_count()``, GPU = local rank; two NCCL
ranks on one GPU do not work; or SLURM bound each task to its own GPUs, ``--gpus-per-task`` /
``--gpu-bind``: a SLURM task with ``CUDA_VISIBLE_DEVICES`` set and fewer GPUs than tasks on the
node takes GPU ``local_rank % device_count``), and ``LONGVLM_DEVICE`` does not pin the CPU. Everything that depends on the answer
follows :func:`use_cuda`: the process-group backend (NCCL or gloo), ``torch.cuda.set_device``, the
CPU shims (:mod:`megatron_vlm.runtime.cpu_shims`), :func:`device`, the model config's
``use_cpu_initialization`` default, the Transformer Engine check and the trainer's GPU-only options.

``LONGVLM_DEVICE``: ``auto`` (default), ``cpu`` (pin the CPU even with a GPU: the test suite does
this for every test not marked ``gpu``) or ``cuda`` (fail instead of falling back to the CPU).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from megatron_vlm.errors import ConfigError
from megatron_vlm.runtime.cpu_shims import apply_cpu_shims, remove_cpu_shims
from megatron_vlm.runtime.launcher import DistEnv, read_dist_env

DEVICE_ENV = "LONGVLM_DEVICE"
CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Placement:
    """The device decision of one process, and why."""

    cuda: bool
    gpu: int | None  # this process's CUDA device index (its local rank) when ``cuda``
    reason: str

    @property
    def backend(self) -> str:
        """The ``torch.distributed`` backend that goes with it."""
        return "nccl" if self.cuda else "gloo"


def device_choice(environ: dict[str, str] | None = None) -> str:
    """``LONGVLM_DEVICE`` (``auto`` when unset), validated."""
    env = os.environ if environ is None else environ
    choice = (env.get(DEVICE_ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        raise ConfigError(f"{DEVICE_ENV}={env.get(DEVICE_ENV)!r}: choose one of {', '.join(CHOICES)}")
    return choice


def decide_placement(dist_env: DistEnv | None = None, choice: str | None = None) -> Placement:
    """The device for a process at ``dist_env`` (default: this process's launcher variables).

    ``choice``: ``auto``, ``cpu`` or ``cuda`` (default: ``LONGVLM_DEVICE``). ``cuda`` raises a
    ``ConfigError`` where ``auto`` would fall back to the CPU.
    """
    dist_env = read_dist_env() if dist_env is None else dist_env
    choice = device_choice() if choice is None else device_choice({DEVICE_ENV: choice})
    if choice == "cpu":
        return Placement(False, None, f"{DEVICE_ENV}=cpu pins the CPU")
    if not torch.cuda.is_available():
        reason = "no CUDA GPU (torch.cuda.is_available() is False)"
    elif dist_env.local_world_size <= (gpus := torch.cuda.device_count()):
        return Placement(True, dist_env.local_rank, f"GPU {dist_env.local_rank} of {gpus}")
    elif dist_env.launcher == "slurm" and os.environ.get("CUDA_VISIBLE_DEVICES"):
        gpu = dist_env.local_rank % gpus
        return Placement(True, gpu, f"GPU {gpu} of the {gpus} SLURM bound to this task")
    else:
        reason = (f"{dist_env.local_world_size} processes on this node but {gpus} GPU(s): "
                  "each process needs a GPU of its own")
    if choice == "cuda":
        raise ConfigError(f"{DEVICE_ENV}=cuda, but {reason}")
    return Placement(False, None, reason)


_SETTLED: Placement | None = None


def settle_placement(dist_env: DistEnv, choice: str | None = None) -> Placement:
    """Decide for this process (see :func:`decide_placement`; ``choice`` overrides ``LONGVLM_DEVICE``)
    and make the CPU shims follow: applied for the CPU, removed for CUDA. :func:`device` and
    :func:`use_cuda` return this decision until :func:`unsettle_placement`. Called by
    ``initialize_distributed``."""
    global _SETTLED
    choice = device_choice() if choice is None else device_choice({DEVICE_ENV: choice})
    placement = decide_placement(dist_env, choice)
    if placement.cuda:
        remove_cpu_shims()
        torch.cuda.set_device(placement.gpu)
    else:
        if torch.cuda.is_available() and choice == "auto":
            warnings.warn(f"computing on the CPU over gloo: {placement.reason} "
                          f"(set {DEVICE_ENV}=cuda to make this an error)", stacklevel=3)
        apply_cpu_shims()
    _SETTLED = placement
    return placement


def unsettle_placement() -> None:
    """Forget the settled decision (``runtime.destroy``); the shims stay until the next decision."""
    global _SETTLED
    _SETTLED = None


def current_placement() -> Placement:
    """The settled decision, or what :func:`decide_placement` would decide now."""
    return _SETTLED if _SETTLED is not None else decide_placement()


def use_cuda() -> bool:
    """Whether this process computes on its GPU (False: on the CPU, with the CPU shims)."""
    return current_placement().cuda


def device() -> torch.device:
    """The device this process computes on: its own CUDA device, else the CPU. Use it instead of
    ``.cuda()`` / ``"cuda"``."""
    placement = current_placement()
    return torch.device("cuda", placement.gpu) if placement.cuda else torch.device("cpu")
