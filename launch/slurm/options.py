"""The options of ``longvlm slurm``: what the scheduler needs (shared by every job it writes), and what
each kind of job adds. Each is declared once here, with its help text; the CLI and ``longvlm.api``
are built from these dataclasses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from megatron_vlm.errors import LongVLMError
from megatron_vlm.utils.checks import MAX_GPUS, MAX_WAIT_S, MAX_WORKERS, check_number

# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]]
_TIME = r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE"
_DEPENDENCY = (r"(singleton|(after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)(:\d+(_\d+)?(\+\d+)?)+)"
               r"([,?](singleton|(after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)(:\d+(_\d+)?(\+\d+)?)+))*")
MAX_CHAIN = 1000  # jobs in one chain
MAX_SHARDS = 100_000  # array tasks (a cluster's MaxArraySize is usually far smaller)

_SCHEDULER = "scheduler (sbatch options)"
_ENVIRONMENT = "job environment"


class SlurmError(LongVLMError, ValueError):
    """Bad options, a recipe or stage command that would fail in the job, or a failed ``sbatch``."""


@dataclass(kw_only=True)
class SchedulerOptions:
    """The scheduler options and the environment of every job ``longvlm slurm`` writes."""

    partition: str | None = field(default=None, metadata={"group": _SCHEDULER, "help": (
        "partition (default: the cluster's default)")})
    account: str | None = field(default=None, metadata={"group": _SCHEDULER, "help": "account to charge"})
    qos: str | None = field(default=None, metadata={"group": _SCHEDULER, "help": "quality of service"})
    time: str | None = field(default=None, metadata={"group": _SCHEDULER, "help": (
        "wall-clock limit of each job, e.g. 04:00:00 or 2-00:00:00 (default: the partition's)")})
    mem: str | None = field(default=None, metadata={"group": _SCHEDULER, "help": (
        "memory per node, e.g. 480G (0: all of it; default: the partition's)")})
    cpus_per_task: int | None = field(default=None, metadata={"group": _SCHEDULER, "help": (
        "CPUs per task (default: training: data.num_workers + 1 per rank; pool: its --workers; "
        "synth and merges: 2)")})
    job_name: str | None = field(default=None, metadata={"group": _SCHEDULER, "help": (
        "job name (default: longvlm-COMMAND-NAME, NAME from the run directory or the output)")})
    sbatch: list[str] = field(default_factory=list, metadata={"group": _SCHEDULER, "repeat": True,
                                                              "metavar": "OPTION", "help": (
        "another sbatch option for the script's header, e.g. --sbatch=--exclusive "
        "--sbatch=--constraint=h100 (repeatable)")})
    dependency: str | None = field(default=None, metadata={"group": _SCHEDULER, "help": (
        "start the (first) job only after this, e.g. afterok:1234 (sbatch --dependency)")})
    submit: bool = field(default=False, metadata={"group": _SCHEDULER, "help": (
        "submit the job(s) with sbatch and record their ids for 'longvlm slurm status' (without it: only "
        "write the scripts)")})
    venv: str | None = field(default=None, metadata={"group": _ENVIRONMENT, "help": (
        "activate this virtual environment in the job (default: run the Python interpreter that runs this "
        "command)")})
    container_image: str | None = field(default=None, metadata={"group": _ENVIRONMENT, "help": (
        "run the tasks in this container image (pyxis/enroot: srun --container-image); the paths of the "
        "recipe and data must be the same inside it (--container-mounts)")})
    container_mounts: str | None = field(default=None, metadata={"group": _ENVIRONMENT, "help": (
        "srun --container-mounts, e.g. /data:/data,/home:/home")})
    setup: list[str] = field(default_factory=list, metadata={"group": _ENVIRONMENT, "repeat": True,
                                                             "metavar": "SHELL_LINE", "help": (
        "a shell line run before the job's command, e.g. --setup 'module load cuda/12.4' (repeatable)")})
    env: list[str] = field(default_factory=list, metadata={"group": _ENVIRONMENT, "repeat": True,
                                                           "metavar": "KEY=VALUE", "help": (
        "an environment variable exported in the job, e.g. --env NCCL_IB_HCA=mlx5 (repeatable; overrides "
        "the defaults the script sets)")})

    def check_scheduler_options(self) -> None:
        if self.venv and self.container_image:
            raise SlurmError("--venv and --container-image are exclusive: the container brings its own Python")
        if self.container_mounts and not self.container_image:
            raise SlurmError("--container-mounts needs --container-image")
        check_number("--cpus-per-task", self.cpus_per_task, ge=1, le=MAX_WORKERS, error=SlurmError)
        if self.time is not None and not re.fullmatch(_TIME, self.time.strip()):
            raise SlurmError(f"--time {self.time!r}: not a SLURM time limit (MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM "
                             "or D-HH:MM:SS, e.g. 24:00:00 or 2-00:00:00)")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", self.mem.strip(), flags=re.I):
            raise SlurmError(f"--mem {self.mem!r}: not a SLURM memory size (e.g. 480G, 64000M; 0: all of the node's)")
        if self.dependency is not None and not re.fullmatch(_DEPENDENCY, self.dependency.strip()):
            raise SlurmError(f"--dependency {self.dependency!r}: not a SLURM dependency (e.g. afterok:1234, "
                             "afterany:1234:1235, singleton)")
        for item in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item, flags=re.S):
                raise SlurmError(f"--env {item!r}: expected KEY=VALUE")
        for item in self.sbatch:
            if not item.startswith("-"):
                raise SlurmError(f"--sbatch {item!r}: expected an sbatch option such as --exclusive")


@dataclass(kw_only=True)
class TrainJobConfig(SchedulerOptions):
    """``longvlm slurm train RECIPE [key=value ...]``."""

    recipe: str = field(metadata={"positional": True, "metavar": "RECIPE",
                                  "help": "a recipe YAML file or a built-in recipe's name (as for longvlm train)"})
    overrides: list[str] = field(default_factory=list, metadata={
        "positional": True, "metavar": "KEY=VALUE", "help": "dotted overrides of recipe keys (as for longvlm train)"})
    run_dir: str | None = field(default=None, metadata={"metavar": "RUN_DIR", "help": (
        "the run directory (default: runs/RECIPE_NAME); its config.yaml is written now, the job trains in it")})
    output: str | None = field(default=None, metadata={"flag": "-o", "metavar": "SCRIPT", "help": (
        "the sbatch script to write (default: RUN_DIR/slurm/train.sbatch, rewritten by every run of this command)")})
    force: bool = field(default=False, metadata={"help": "replace an existing -o SCRIPT"})
    nodes: int = field(default=1, metadata={"help": "nodes"})
    gpus_per_node: int = field(default=8, metadata={"help": (
        "GPUs per node, one task (rank) each; 0: CPU tasks (testing on machines without GPUs)")})
    tasks_per_node: int | None = field(default=None, metadata={"help": (
        "ranks per node (default: --gpus-per-node; 1 with --gpus-per-node 0)")})
    chain: int = field(default=1, metadata={"help": (
        "submit N jobs, each starting when the previous one ends unsuccessfully (afternotok), e.g. because "
        "it saved at its time limit; each resumes the run; once one finishes the run, the rest are "
        "cancelled. For clusters without requeue; with 1 the job requeues itself instead")})
    signal_seconds: int = field(default=120, metadata={"help": (
        "send SIGUSR1 this long before the time limit (sbatch --signal=USR1@N): the ranks finish their "
        "step, save and exit 75; must cover a step plus a checkpoint save")})
    step_wait: int = field(default=300, metadata={"help": (
        "once a rank has exited, the others get this many seconds before the step is ended (srun --wait): "
        "ranks that saved on a signal exit together, a crashed rank does not leave the others hanging")})

    def ranks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node or 1

    def check(self) -> None:
        self.check_scheduler_options()
        check_number("--nodes", self.nodes, ge=1, le=MAX_GPUS, error=SlurmError)
        check_number("--chain", self.chain, ge=1, le=MAX_CHAIN, error=SlurmError)
        check_number("--gpus-per-node", self.gpus_per_node, ge=0, le=MAX_WORKERS, error=SlurmError)
        check_number("--tasks-per-node", self.tasks_per_node, ge=1, le=MAX_WORKERS, error=SlurmError)
        for name in ("signal_seconds", "step_wait"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), ge=0, le=MAX_WAIT_S, error=SlurmError)
        if self.gpus_per_node and self.ranks_per_node() != self.gpus_per_node:
            raise SlurmError(f"--tasks-per-node {self.tasks_per_node} with --gpus-per-node {self.gpus_per_node}: "
                             "training runs one rank per GPU")

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node()


@dataclass(kw_only=True)
class StageJobConfig(SchedulerOptions):
    """``longvlm slurm pool|synth --num-shards N [options] -- STAGE_ARGS``."""

    num_shards: int = field(metadata={"help": (
        "array tasks: each runs the stage on one shard of the input (--shard $SLURM_ARRAY_TASK_ID)")})
    max_parallel: int | None = field(default=None, metadata={"help": (
        "run at most this many array tasks at once (--array=0-N%%K)")})
    stage_args: list[str] = field(default_factory=list, metadata={
        "positional": True, "metavar": "STAGE_ARGS", "help": (
            "after --: the stage's command line as for one unsharded run, e.g. -- pdfs.txt -o /data/pool "
            "--workers 8")})

    def check(self) -> None:
        self.check_scheduler_options()
        check_number("--num-shards", self.num_shards, ge=1, le=MAX_SHARDS, error=SlurmError)
        check_number("--max-parallel", self.max_parallel, ge=1, error=SlurmError)
        if not self.stage_args:
            raise SlurmError("give the stage's command line after --, e.g. -- pdfs/ -o /data/pool --workers 8")


@dataclass(kw_only=True)
class StatusConfig:
    """``longvlm slurm status DIR``."""

    directory: str = field(metadata={"positional": True, "metavar": "DIR", "help": (
        "a run directory (longvlm slurm train), or the output of longvlm slurm pool|synth")})
    json: bool = field(default=False, metadata={"help": "print one JSON object"})


@dataclass(kw_only=True)
class LocalRunConfig:
    """``longvlm slurm local RECIPE [key=value ...]``: the training job on this machine, without SLURM."""

    recipe: str = field(metadata={"positional": True, "metavar": "RECIPE",
                                  "help": "a recipe YAML file or a built-in recipe's name (as for longvlm train)"})
    overrides: list[str] = field(default_factory=list, metadata={
        "positional": True, "metavar": "KEY=VALUE", "help": "dotted overrides of recipe keys (as for longvlm train)"})
    output: str | None = field(default=None, metadata={"flag": "-o", "metavar": "RUN_DIR", "help": (
        "run directory (default: runs/RECIPE_NAME); rerun on it to resume")})
    nproc_per_node: int | None = field(default=None, metadata={"help": (
        "ranks to start (default: one per visible GPU, 1 without a GPU)")})
    step_wait: int = field(default=300, metadata={"help": (
        "once a rank has exited, the others get this many seconds before they are ended")})

    def check(self) -> None:
        check_number("--nproc-per-node", self.nproc_per_node, ge=1, le=MAX_WORKERS, error=SlurmError)
        check_number("--step-wait", self.step_wait, ge=0, le=MAX_WAIT_S, error=SlurmError)
