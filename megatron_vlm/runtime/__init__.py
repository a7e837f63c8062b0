"""Distributed start-up for Megatron-Core, the device decision, and the shims that let it run on a CPU.

Use :func:`initialize_distributed` once per process (torchrun, ``srun`` or a plain ``python``),
:func:`device` wherever a tensor must live on "the" device (:func:`use_cuda` for GPU-only options),
:func:`process_group` around ``dist_checkpointing`` calls made outside a distributed job, and
:func:`destroy` in tests. Four modules: ``launcher`` (reading torchrun / SLURM variables),
``placement`` (CUDA or CPU for this process: the one place that decides), ``cpu_shims``
(Megatron-Core on the CPU) and ``startup`` (process groups, seeds). See docs/runtime.md.
"""

from megatron_vlm.runtime.cpu_shims import apply_cpu_shims, remove_cpu_shims
from megatron_vlm.runtime.launcher import DistEnv, expand_slurm_nodelist, read_dist_env
from megatron_vlm.runtime.placement import DEVICE_ENV, Placement, decide_placement, device, use_cuda
from megatron_vlm.runtime.startup import destroy, initialize_distributed, process_group

__all__ = ["DEVICE_ENV", "DistEnv", "Placement", "apply_cpu_shims", "decide_placement", "destroy", "device",
           "expand_slurm_nodelist", "initialize_distributed", "process_group", "read_dist_env", "remove_cpu_shims",
           "use_cuda"]
