"""``longvlm slurm pool|synth --num-shards N -- STAGE_ARGS``: a job array that runs the stage sharded
(``--shard $SLURM_ARRAY_TASK_ID --num-shards N``) and a merge job that starts when every array task
succeeded (``afterok``); the merged output equals one unsharded run's.

Shards are written into ``OUTPUT.shards/`` (``shard-K/`` pools, ``shard-K.jsonl`` task files); the
scripts, logs and job record into ``OUTPUT.shards/slurm/``, with ``stage.json`` describing the job for
``longvlm slurm status``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from launch.slurm.jobs import LOGS, SLURM_DIR, Submission, submit
from launch.slurm.options import SlurmError, StageJobConfig
from launch.slurm.script import JobScript, Shell, environment, job_name, scheduler_lines, srun_line

STAGE_INFO = "stage.json"
MERGE_CPUS = 2


@dataclass(frozen=True)
class Stage:
    """What the job needs to know of a stage's command."""

    cli: str  # the module with add_arguments (its parser checks the command line)
    config: str  # "module:Class" of its config dataclass
    suffix: str  # of a shard's output name (a pool is a directory, a task file a .jsonl)
    done_marker: str  # written last into / beside a complete output

    def config_class(self) -> type:
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)


STAGES = {
    "pool": Stage("preprocess.pool.cli", "preprocess.pool.config:PoolConfig", "", "pool.json"),
    "synth": Stage("preprocess.synth.cli", "preprocess.synth.config:SynthConfig", ".jsonl", ".summary.json"),
}


def output_complete(stage: str, path: Path) -> bool:
    """Whether a stage's output (a shard's or the merged one) was completely written."""
    if stage == "pool":
        return (path / STAGES[stage].done_marker).is_file()
    stem = path.name[:-len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + STAGES[stage].done_marker).is_file()


class _StageParser(argparse.ArgumentParser):
    """The stage's own parser, its errors raised as one ``SlurmError`` line instead of usage and exit."""

    def error(self, message: str):
        raise SlurmError(f"the {self.prog} command line after --: {message}")


def parse_stage(stage: str, args: list[str]):
    """The stage's config from its command line, checked by the stage's own parser and dataclass."""
    from megatron_vlm.utils.config_args import dataclass_from_args

    parser = _StageParser(prog=f"longvlm {stage}")
    importlib.import_module(STAGES[stage].cli).add_arguments(parser)
    namespace = parser.parse_args(args)
    config = dataclass_from_args(STAGES[stage].config_class(), namespace)
    if config.num_shards != 1 or config.shard != 0 or config.merge:
        raise SlurmError(f"leave --shard, --num-shards and --merge out of the {stage} command line: the job array "
                         "sets them")
    if stage == "pool" and output_complete(stage, Path(config.output)):  # the merge would refuse it at the end
        raise SlurmError(f"-o {config.output} already holds a pool; choose another output")
    if stage == "synth":
        from megatron_vlm.formats.pool import Pool

        config.validate()
        if Path(config.pool).exists():  # checked here, not in every array task (absent: a queued job's output)
            Pool.open(config.pool)
    return config


def array_cpus(stage: str, stage_config) -> int:
    """CPUs per array task unless --cpus-per-task says: a pool's --workers; 2 for synth (its requests are threads)."""
    return stage_config.workers if stage == "pool" else 2


def without_output(args: list[str]) -> list[str]:
    """The stage's command line without its ``-o``/``--output`` (each array task writes its own shard)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-o", "--output"):
            skip = True
        elif not (arg.startswith("--output=") or (arg.startswith("-o") and not arg.startswith("--"))):
            out.append(arg)
    return out


def work_dir(output: str | Path) -> Path:
    return Path(str(Path(output).resolve()) + ".shards")


def shard_paths(work: Path, stage: str, num_shards: int) -> list[Path]:
    suffix = STAGES[stage].suffix
    return [work / f"shard-{k}{suffix}" for k in range(num_shards)]


def _shard_word(work: Path, stage: str, index: str) -> Shell:
    """The shell word of shard ``${index}``'s output path."""
    suffix = STAGES[stage].suffix
    return Shell(shlex.quote(f"{work}/shard-") + f'"${{{index}}}"' + (shlex.quote(suffix) if suffix else ""))


def stage_scripts(stage: str, config: StageJobConfig, stage_config) -> tuple[JobScript, JobScript]:
    """The array script and the merge script."""
    n = config.num_shards
    output = Path(stage_config.output).resolve()
    work = work_dir(output)
    slurm_dir = work / SLURM_DIR
    name = job_name(config, stage, output.name)
    cpus = array_cpus(stage, stage_config)
    setup, env = environment(config, {"OMP_NUM_THREADS": str(config.cpus_per_task or cpus)})
    array_range = f"0-{n - 1}" + (f"%{config.max_parallel}" if config.max_parallel else "")
    array = JobScript(
        "array", slurm_dir / "array.sbatch", f"longvlm {stage}, sharded: {n} array tasks -> {work}",
        [f"--array={array_range}", "--ntasks=1",
         *scheduler_lines(config, name=name, log=slurm_dir / LOGS / "%x-%A_%a.log", cpus_per_task=cpus),
         "--requeue", *config.sbatch],
        srun_line(config, ["--ntasks=1"], [stage, *without_output(config.stage_args), "-o", _shard_word(work, stage, "shard"),
                                           "--shard", Shell('"${shard}"'), "--num-shards", str(n), "--no-progress"]),
        notes=[f"Then: the merge job ({slurm_dir / 'merge.sbatch'}) writes {output}"],
        setup=setup, env=env, job_id="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}")
    merge_stage = [stage, stage_config.pool] if stage == "synth" else [stage]
    merge = JobScript(
        "merge", slurm_dir / "merge.sbatch", f"longvlm {stage} --merge: {n} shards -> {output}",
        ["--ntasks=1", *scheduler_lines(config, name=f"{name}-merge", log=slurm_dir / LOGS / "%x-%j.log",
                                        cpus_per_task=MERGE_CPUS), "--requeue", *config.sbatch],
        srun_line(config, ["--ntasks=1"], [*merge_stage, "--merge", Shell('"${shards[@]}"'), "-o", str(output),
                                           "--no-progress"]),
        notes=[f"Submit it after the array job ARRAY_ID: sbatch --dependency=afterok:ARRAY_ID "
               f"--kill-on-invalid-dep=yes {slurm_dir / 'merge.sbatch'}"],
        setup=setup, env=env, extra={"num_shards": n, "shard_path": _shard_word(work, stage, "k")})
    return array, merge


def stage_job(stage: str, config: StageJobConfig) -> Submission:
    """``longvlm slurm pool|synth``."""
    from megatron_vlm.utils.atomic import write_json

    if stage not in STAGES:
        raise SlurmError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    config.check()
    stage_config = parse_stage(stage, config.stage_args)
    array, merge = stage_scripts(stage, config, stage_config)
    output = Path(stage_config.output).resolve()
    work = work_dir(output)
    write_json(work / SLURM_DIR / STAGE_INFO, {
        "stage": stage, "output": str(output), "num_shards": config.num_shards,
        "shards": [str(p) for p in shard_paths(work, stage, config.num_shards)],
        "stage_args": config.stage_args})
    result = Submission(work, [array.write(), merge.write()])
    if not config.submit:
        result.next_steps.append(f"submit: id=$(sbatch --parsable {array.path}) && sbatch "
                                 f"--dependency=afterok:$id --kill-on-invalid-dep=yes {merge.path}")
        return result
    array_id = submit(work, array.path, "array", dependency=config.dependency)
    result.job_ids += [array_id, submit(work, merge.path, "merge", dependency=f"afterok:{array_id}",
                                        kill_on_invalid_dep=True)]
    return result


def read_stage_info(work: Path) -> dict | None:
    path = work / SLURM_DIR / STAGE_INFO
    return json.loads(path.read_text()) if path.is_file() else None
