"""``longvlm slurm train``: check a recipe for the job's world size, write the run's ``config.yaml`` and
the sbatch script, and (``--submit``) submit it, or a chain of jobs.

The job runs ``longvlm train RUN_DIR/config.yaml -o RUN_DIR`` on one task per rank, so what trains
is what was checked here; rerunning the command (e.g. with another ``parallel.tp``) rewrites the
config within what a resumed run may change.
"""

from __future__ import annotations

import re
from pathlib import Path

from launch.slurm.jobs import LOGS, SLURM_DIR, Submission, active_jobs, submit
from launch.slurm.options import SlurmError, TrainJobConfig
from launch.slurm.script import GPU_ENV, JobScript, environment, job_name, scheduler_lines, srun_line
from megatron_vlm.utils.atomic import check_output_file
from training.config import TrainConfig


def run_directory(config: TrainJobConfig) -> Path:
    """``--run-dir``, else ``runs/RECIPE_NAME`` (as ``longvlm train`` names it)."""
    from training.cli import recipe_path

    return Path(config.run_dir or Path("runs") / recipe_path(config.recipe).stem).resolve()


def prepare_run(config: TrainJobConfig) -> tuple[TrainConfig, Path]:
    """The checked training config and its run directory, whose ``config.yaml`` is (re)written."""
    from training.cli import recipe_path
    from training.config import load_recipe
    from training.run_dir import write_config
    from training.trainer import preflight

    path = recipe_path(config.recipe)
    train_config = load_recipe(path, config.overrides)
    if "SIGUSR1" not in train_config.checkpoint.exit_signals:
        raise SlurmError(f"checkpoint.exit_signals={train_config.checkpoint.exit_signals} lacks SIGUSR1, which the "
                         "job sends before its time limit (the run would be killed instead of saved)")
    run_dir = run_directory(config)
    preflight(train_config, run_dir, config.world_size, gpu=config.gpus_per_node > 0)
    write_config(run_dir, train_config)
    return train_config, run_dir


def train_script(config: TrainJobConfig, train_config: TrainConfig, run_dir: Path) -> JobScript:
    ranks, gpus = config.ranks_per_node(), config.gpus_per_node
    cpus = config.cpus_per_task or train_config.data.num_workers + 1
    slurm_dir = run_dir / SLURM_DIR
    sbatch = [f"--nodes={config.nodes}", f"--ntasks-per-node={ranks}"]
    sbatch += [f"--gpus-per-node={gpus}"] if gpus else []
    sbatch += scheduler_lines(config, name=job_name(config, "train", run_dir.name),
                              log=slurm_dir / LOGS / "%x-%j.log", cpus_per_task=cpus)
    sbatch += [f"--signal=USR1@{config.signal_seconds}", "--requeue", *config.sbatch]
    setup, env = environment(config, GPU_ENV if gpus else {"OMP_NUM_THREADS": str(cpus)})
    srun = srun_line(config, [f"--ntasks-per-node={ranks}", f"--cpus-per-task={cpus}", "--kill-on-bad-exit=0",
                              f"--wait={config.step_wait}"],
                     ["train", str(run_dir / "config.yaml"), "-o", str(run_dir)])
    layout, world = train_config.parallel, config.world_size
    path = Path(config.output or slurm_dir / "train.sbatch").resolve()
    notes = [f"Run {run_dir} (its config.yaml: recipe {config.recipe}{' with the overrides above' if config.overrides else ''})",
             f"{world} ranks = {config.nodes} node(s) x {ranks} ({'GPUs' if gpus else 'CPU tasks'}); "
             f"TP {layout.tp} PP {layout.pp} CP {layout.cp} DP {layout.data_parallel_size(world)}",
             f"Submit: sbatch {path}    Status: longvlm slurm status {run_dir}"]
    return JobScript("train", path, f"longvlm training job: {run_dir.name}", sbatch, srun, notes=notes, setup=setup,
                     env=env, extra={"signal_seconds": config.signal_seconds, "requeue": config.chain == 1})


def check_not_running(config: TrainJobConfig, run_dir: Path) -> None:
    """Two jobs training one run directory would overwrite each other's checkpoints: refuse a second one,
    unless it waits for the first (``--dependency``)."""
    waits_for = set(re.findall(r"\d+", config.dependency or ""))
    blocking = [j["job"] for j in active_jobs(run_dir) if j["job"].split("_")[0] not in waits_for]
    if blocking:
        raise SlurmError(f"{run_dir} has job(s) {', '.join(blocking)} queued or running; scancel them, or submit "
                         f"behind them with --dependency afterany:{blocking[-1]}")


def train_job(config: TrainJobConfig) -> Submission:
    """``longvlm slurm train``."""
    config.check()
    if config.output:  # before the run directory is written
        check_output_file(config.output, "-o", replace=config.force, exists_hint="add --force to replace it")
    if config.submit:
        check_not_running(config, run_directory(config))
    train_config, run_dir = prepare_run(config)
    script = train_script(config, train_config, run_dir).write()
    result = Submission(run_dir, [script])
    if not config.submit:
        if config.chain > 1:
            result.next_steps.append(f"submit the chain: id=$(sbatch --parsable {script}); then {config.chain - 1} x "
                                     f"id=$(sbatch --parsable --dependency=afternotok:$id --kill-on-invalid-dep=yes "
                                     f"{script})")
        else:
            result.next_steps.append(f"submit: sbatch {script}")
        return result
    for k in range(config.chain):
        dependency = config.dependency if k == 0 else f"afternotok:{result.job_ids[-1]}"
        result.job_ids.append(submit(run_dir, script, "train", dependency=dependency, kill_on_invalid_dep=k > 0))
    return result
