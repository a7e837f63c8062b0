"""Distributed start-up for Megatron-Core, and the shims that let it run on a CPU-only torch.

Use :func:`initialize_distributed` once per process (torchrun, ``srun`` or a plain ``python``),
:func:`device` wherever a tensor must live on "the" device, :func:`process_group` around
``dist_checkpointing`` calls made outside a distributed job, and :func:`destroy` in tests.
Three modules: ``launcher`` (reading torchrun / SLURM variables), ``cpu_shims`` (Megatron-Core on a
CPU-only torch) and ``startup`` (process groups, seeds). See docs/runtime.md.
"""

from megatron_vlm.runtime.cpu_shims import apply_cpu_shims
from megatron_vlm.runtime.launcher import DistEnv, expand_slurm_nodelist, read_dist_env
from megatron_vlm.runtime.startup import destroy, device, initialize_distributed, process_group

__all__ = ["DistEnv", "apply_cpu_shims", "destroy", "device", "expand_slurm_nodelist", "initialize_distributed",
           "process_group", "read_dist_env"]
