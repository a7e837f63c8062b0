"""``longvlm study run FILE...``: run every stage each experiment needs, through the stages' Python APIs.

Steps already done (their ``done.json``) are skipped, also when another experiment made them; a
stage killed midway is rerun, and resumes where its own API resumes (training from its latest
checkpoint, evaluation from its results file; synth and build rewrite their atomic outputs).
``WORK/experiments/NAME.json`` records which artifact each stage of an experiment is, for
``longvlm study report``.
"""

from __future__ import annotations

import datetime
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from launch.study.experiment import Experiment, StudyError, load_experiment
from launch.study.plan import DONE, Step, plan
from megatron_vlm.utils.atomic import write_json

RECORDS = "experiments"


@dataclass
class StepResult:
    experiment: str
    stage: str
    key: str
    status: str  # ran | reused
    seconds: float


def experiment_record(work: Path, name: str) -> Path:
    return work / RECORDS / f"{name}.json"


def write_record(work: Path, experiment: Experiment, steps: list[Step]) -> None:
    write_json(experiment_record(work, experiment.name), {
        "name": experiment.name, "file": experiment.file, "paper": experiment.paper, "notes": experiment.notes,
        "experiment": asdict(experiment),
        "steps": {s.stage: {"kind": s.kind, "key": s.key, "path": str(s.directory(work)), "done": s.done(work)}
                  for s in steps}})


def run_step(step: Step, work: Path, *, nproc_per_node: int | None = None, trained_by_slurm: bool = False) -> None:
    """Run one step through its stage's run function into ``WORK/KIND/KEY/``, then write its ``done.json``.
    ``trained_by_slurm``: a training step was run by a ``longvlm slurm train`` job; only check it finished."""
    from megatron_vlm.utils.config_args import dataclass_from_options

    out = step.directory(work)
    out.mkdir(parents=True, exist_ok=True)
    if step.kind == "train" and trained_by_slurm:
        from launch.study.slurm import train_finished

        if not train_finished(step, work):
            raise StudyError(f"{step.stage}: the run in {out} has not saved its last step; see 'longvlm slurm "
                             f"status {out}', then rerun 'longvlm study run ... --slurm'")
    elif step.kind == "synth":
        from preprocess.synth import SynthConfig, run_synth

        run_synth(dataclass_from_options(SynthConfig, {**step.options, "output": str(out / "tasks.jsonl")}))
    elif step.kind == "build":
        from preprocess.dataset.config import BuildConfig
        from preprocess.dataset.run import build

        build(dataclass_from_options(BuildConfig, step.options))
    elif step.kind == "train":
        from launch.slurm.local import run_local
        from launch.slurm.options import LocalRunConfig

        code = run_local(LocalRunConfig(recipe=step.options["recipe"], overrides=step.options["overrides"],
                                        output=str(out), nproc_per_node=nproc_per_node))
        if code != 0:
            raise StudyError(f"{step.stage}: training in {out} stopped with exit code {code} (75: saved on a "
                             "signal); rerun 'longvlm study run' to resume it")
    elif step.kind == "export":
        from checkpoint_tools.config import MegatronToHFConfig
        from checkpoint_tools.run import run

        hf = out / "hf"
        if not (hf / "config.json").is_file():
            shutil.rmtree(hf, ignore_errors=True)
            run("megatron-to-hf", MegatronToHFConfig(ckpt=step.options["ckpt"], out=str(hf),
                                                     hf_template=step.options["hf_template"]))
    else:
        from evaluation.run import TASKS, run_task

        spec = TASKS[step.options["task"]]
        options = {k: v for k, v in step.options.items() if k != "task"}
        run_task(spec.name, dataclass_from_options(spec.config, {**options, "output": str(out / "results"),
                                                                  "progress": False}))
    write_json(out / DONE, {"stage": step.stage, "key": step.key, "identity": step.identity,
                            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})


def run_experiments(files: list[str], overrides: list[str], work: str | Path, *, only: list[str] | None = None,
                    nproc_per_node: int | None = None, slurm=None, log=print) -> list[StepResult]:
    """Plan every experiment first (so a bad file fails before anything runs), then run their steps here;
    with ``slurm`` (the scheduler options of ``--slurm``) run only the ``only`` steps here, then write (and
    submit) jobs for the steps that can start (``launch.study.slurm``)."""
    work = Path(work).resolve()
    if work.exists() and not work.is_dir():
        raise StudyError(f"--work {work}: not a directory")
    experiments = [load_experiment(f, overrides) for f in files]
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise StudyError(f"two experiments named {sorted(n for n in names if names.count(n) > 1)[0]!r}")
    plans = [(e, plan(e, work)) for e in experiments]
    stages = {s.stage for _, steps in plans for s in steps}
    unknown = sorted(set(only or ()) - stages)
    if unknown:
        raise StudyError(f"--only {unknown[0]}: not a stage of these experiments (they have {', '.join(sorted(stages))})")
    if slurm is not None:
        from launch.study.slurm import check_options

        check_options(slurm)
    results: list[StepResult] = []
    for experiment, steps in plans:
        write_record(work, experiment, steps)
        for step in steps:
            if (only and step.stage not in only) or (slurm is not None and not only):
                continue
            if step.done(work):
                results.append(StepResult(experiment.name, step.stage, step.key, "reused", 0.0))
                continue
            missing = [s.stage for s in steps if s.stage in step.needs and not s.done(work)]
            if missing:
                raise StudyError(f"{experiment.name}: {step.stage} needs {', '.join(missing)} first")
            log(f"== {experiment.name}: {step.stage} ({step.key}) -> {step.directory(work)}")
            start = time.perf_counter()
            run_step(step, work, nproc_per_node=nproc_per_node, trained_by_slurm=slurm is not None)
            results.append(StepResult(experiment.name, step.stage, step.key, "ran", time.perf_counter() - start))
            write_record(work, experiment, steps)
    if slurm is not None:
        from launch.study.slurm import submit_ready

        for script in submit_ready(plans, files, overrides, work, slurm):
            log(f"wrote {script}")
    return results


def format_plan(files: list[str], overrides: list[str], work: str | Path) -> str:
    """Each experiment's stages, artifact keys and paths, and whether they are done (``--dry-run``)."""
    work = Path(work).resolve()
    lines = []
    for file in files:
        experiment = load_experiment(file, overrides)
        lines.append(f"{experiment.name} ({experiment.paper or file})")
        for step in plan(experiment, work):
            state = "done" if step.done(work) else "to do"
            lines.append(f"  {step.stage:<14}{step.key:<18}{state:<7}{step.directory(work)}")
    return "\n".join(lines)


def format_results(results: list[StepResult]) -> str:
    width = max([len(r.experiment) for r in results] + [10])
    lines = [f"{'experiment':<{width}}  {'stage':<14}{'artifact':<18}{'status':<8}{'seconds':>8}"]
    lines += [f"{r.experiment:<{width}}  {r.stage:<14}{r.key:<18}{r.status:<8}{r.seconds:>8.1f}" for r in results]
    return "\n".join(lines)


def interrupted_note(work: str) -> str:
    return (f"finished stages are kept in {work}/ (each marked by its done.json); rerun the same "
            "'longvlm study run' to go on from there")
