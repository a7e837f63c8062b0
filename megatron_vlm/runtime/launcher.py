"""Where a process sits in its job: rank, world size and rendezvous, from torchrun's or SLURM's variables."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, as read from the launcher's environment variables."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "single"
    local_world_size: int = 1  # processes of this job on this node (each needs a GPU of its own)


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list (``gpu[01-03,07],login1``) like ``scontrol show hostnames``."""
    hosts: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):
        expanded = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            choices = [literal]
            if ranges:
                choices = []
                for part in ranges.split(","):
                    lo, _, hi = part.partition("-")
                    if not hi:
                        choices.append(literal + lo)
                        continue
                    choices += [f"{literal}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
            expanded = [prefix + choice for prefix in expanded for choice in choices]
        hosts += expanded
    return [h for h in hosts if h]


def _first_slurm_host(nodelist: str) -> str:
    hosts = expand_slurm_nodelist(nodelist)
    if not hosts:
        raise ValueError(f"cannot read a host from SLURM_NODELIST={nodelist!r}")
    return hosts[0]


_SLURM_NODELISTS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")


def _slurm_tasks_on_node(env, local_rank: int) -> int:
    """Tasks of this step on this node: ``SLURM_STEP_TASKS_PER_NODE`` (``2(x3),1``: 2 on each of the
    first 3 nodes, 1 on the fourth) at ``SLURM_NODEID``; else at least ``local_rank + 1``."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
    counts = [int(n) for n, repeat in re.findall(r"(\d+)(?:\(x(\d+)\))?", spec) for _ in range(int(repeat or 1))]
    node = int(env.get("SLURM_NODEID", 0))
    return counts[node] if node < len(counts) else local_rank + 1


def read_dist_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Read rank, world size, local rank and the rendezvous address from the environment.

    torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` win; otherwise
    SLURM's ``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``)/``SLURM_LOCALID`` with the
    first host of ``SLURM_STEP_NODELIST`` (or the job's node list) as the master and ``MASTER_PORT`` if set, else a
    port derived from ``SLURM_JOB_ID`` (so two jobs sharing a node do not collide); otherwise a
    single process. ``local_world_size`` is torchrun's ``LOCAL_WORLD_SIZE`` or SLURM's tasks on this
    node (at least ``local_rank + 1``).
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        local_rank = int(env.get("LOCAL_RANK", 0))
        return DistEnv(
            rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]), local_rank=local_rank,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)), launcher="torchrun",
            local_world_size=max(int(env.get("LOCAL_WORLD_SIZE", 0)), local_rank + 1),
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        # a job step (srun) may use fewer nodes / tasks than the allocation: its own values first
        nodelist = next((env[k] for k in _SLURM_NODELISTS if env.get(k)), None)
        if not nodelist:
            raise ValueError(f"SLURM_PROCID is set but none of {', '.join(_SLURM_NODELISTS)}")
        port = env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000
        local_rank = int(env.get("SLURM_LOCALID", 0))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"]),
            local_rank=local_rank,
            master_addr=env.get("MASTER_ADDR") or _first_slurm_host(nodelist),
            master_port=int(port), launcher="slurm",
            local_world_size=max(_slurm_tasks_on_node(env, local_rank), local_rank + 1),
        )
    return DistEnv(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=0,
                   launcher="single")
