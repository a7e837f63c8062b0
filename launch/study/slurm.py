"""``longvlm study run FILE... --slurm``: the experiments as a chain of ``longvlm slurm`` jobs.

Only the steps whose inputs are done can be written now (a training job's recipe is checked against
its built dataset when it is written), so the chain continues itself: every job ends by running
``longvlm study run ... --slurm`` again, which writes (and with ``--submit`` submits) the steps that
have become ready. A training step goes through ``longvlm slurm train`` (any number of nodes,
requeued at its time limit) followed by a one-task job that checks the run reached its last step,
marks it done and continues. Steps queued or running are not submitted twice (their jobs are
recorded in ``WORK/slurm/jobs.jsonl``; ``longvlm slurm status WORK`` shows them).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from launch.slurm.jobs import LOGS, SLURM_DIR, active_jobs, read_jobs, submit
from launch.slurm.options import TrainJobConfig
from launch.slurm.script import JobScript, environment, job_name, scheduler_lines, srun_line
from launch.study.experiment import StudyError
from launch.study.plan import Step

COMMAND_CPUS = 4


def train_finished(step: Step, work: Path) -> bool:
    """Whether the run in the step's directory saved its last step (its config's step count for its data)."""
    from launch.slurm.status import planned_steps
    from megatron_vlm.formats.checkpoint import latest_iteration
    from training.config import RecipeError, load_recipe

    run_dir = step.directory(work)
    if not (run_dir / "config.yaml").is_file():
        return False
    try:
        total = planned_steps(load_recipe(run_dir / "config.yaml"))
    except RecipeError:
        return False
    return total is not None and latest_iteration(run_dir / "checkpoints") == total


def _continue_args(files: list[str], overrides: list[str], work: Path, argv: list[str]) -> list[str]:
    """``study run`` for a job: the same files, overrides and scheduler options, plus ``argv``."""
    return ["study", "run", *files, *overrides, "--work", str(work), *argv]


def _command_job(options, work: Path, role: str, args: list[str], *, gpus: int) -> JobScript:
    slurm_dir = work / SLURM_DIR
    cpus = options.cpus_per_task or COMMAND_CPUS
    sbatch = ["--nodes=1", "--ntasks=1", *([f"--gpus-per-node={gpus}"] if gpus else [])]
    sbatch += scheduler_lines(options, name=job_name(options, "study", role), log=slurm_dir / LOGS / "%x-%j.log",
                              cpus_per_task=cpus)
    sbatch += list(options.sbatch)
    setup, env = environment(options, {"OMP_NUM_THREADS": str(cpus)})
    srun = srun_line(options, ["--ntasks=1", f"--cpus-per-task={cpus}"], args)
    return JobScript("command", slurm_dir / f"{role}.sbatch", f"longvlm study: {role}", sbatch, srun,
                     notes=[f"Runs: longvlm {shlex.join(args)}"], setup=setup, env=env,
                     extra={"description": f"study step {role}; the job then submits the steps that became ready"})


def submit_ready(plans: list, files: list[str], overrides: list[str], work: Path, options) -> list[Path]:
    """Write (and, with ``options.submit``, submit) a job for every step that can start now; the scripts."""
    running = {j["job"].split("_")[0] for j in active_jobs(work)} if options.submit else set()
    queued = {r.role.removesuffix("-done") for r in read_jobs(work) if r.job_id in running}
    scripts: list[Path] = []
    seen: set[str] = set()
    scheduler = {name: getattr(options, name) for name in (
        "partition", "account", "qos", "time", "mem", "cpus_per_task", "job_name", "sbatch", "venv",
        "container_image", "container_mounts", "setup", "env", "dependency")}
    carry = _scheduler_argv(options)
    for _, steps in plans:
        done = {s.stage for s in steps if s.done(work)}
        for step in steps:
            role = f"{step.kind}-{step.key}"
            if step.stage in done or role in seen or role in queued or not set(step.needs) <= done:
                continue
            seen.add(role)
            if step.kind == "train":
                from launch.slurm.train_job import train_job

                job = train_job(TrainJobConfig(
                    recipe=step.options["recipe"], overrides=step.options["overrides"],
                    run_dir=str(step.directory(work)), nodes=options.nodes, gpus_per_node=options.gpus_per_node,
                    submit=options.submit, **scheduler))
                scripts += job.scripts
                after = f"afterok:{':'.join(job.job_ids)}" if job.job_ids else None
                check = _command_job(options, work, f"{role}-done", _continue_args(
                    files, overrides, work, ["--only", step.stage, "--slurm", *carry]), gpus=0).write()
                scripts.append(check)
                if options.submit:
                    submit(work, check, f"{role}-done", dependency=after, kill_on_invalid_dep=True)
                continue
            gpus = options.gpus_per_node if step.kind == "eval" else 0
            script = _command_job(options, work, role, _continue_args(
                files, overrides, work, ["--only", step.stage, "--slurm", *carry]), gpus=min(gpus, 8)).write()
            scripts.append(script)
            if options.submit:
                submit(work, script, role, dependency=options.dependency)
    return scripts


def _scheduler_argv(options) -> list[str]:
    """The scheduler options as command-line flags, so the jobs submit the next steps alike."""
    argv = []
    for name in ("partition", "account", "qos", "time", "mem", "cpus_per_task", "venv", "container_image",
                 "container_mounts"):
        value = getattr(options, name)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    for name in ("sbatch", "setup", "env"):
        argv += [f"--{name}={value}" for value in getattr(options, name)]
    argv += ["--nodes", str(options.nodes), "--gpus-per-node", str(options.gpus_per_node)]
    return argv + (["--submit"] if options.submit else [])


def check_options(options) -> None:
    options.check_scheduler_options()
    if options.nodes < 1 or options.gpus_per_node < 0:
        raise StudyError("--nodes must be >= 1 and --gpus-per-node >= 0")
