"""Python API: one function per ``longvlm`` subcommand, taking the CLI options as keywords.

    from longvlm import api
    api.pool(inputs=["pdfs/"], output="pool", min_pages=0)

Each function builds the stage's typed config dataclass (its fields are the CLI options, with the
same defaults) and runs the stage in-process.
"""

from __future__ import annotations

from typing import Any

from megatron_vlm.utils.config_args import dataclass_from_options


def pool(**options: Any):
    """``longvlm pool``: build a document pool; returns a ``PoolSummary``.

    Keywords are the CLI options (``inputs``, ``output``, ``min_pages``, ...; see
    ``preprocess.pool.config.PoolConfig``). Read the result with ``preprocess.pool.Pool.open``.
    """
    from preprocess.pool.config import PoolConfig
    from preprocess.pool.run import run

    return run(dataclass_from_options(PoolConfig, options))


def synth(**options: Any):
    """``longvlm synth``: the five training tasks from a pool; returns a ``SynthResult``.

    Keywords are the CLI options (``pool``, ``output``, ``tasks``, ``generator``, ``per_doc``, ...;
    see ``preprocess.synth.config.SynthConfig``).
    """
    from preprocess.synth import SynthConfig, run_synth

    return run_synth(dataclass_from_options(SynthConfig, options))


def build(**options: Any):
    """``longvlm build``: options of ``preprocess.dataset.config.BuildConfig`` as keywords
    (``tasks``, ``pool``, ``tokenizer``, ``output`` required). Returns a ``BuildResult``
    (``prefix``, ``files``, ``report``); raises ``BuildError`` on bad input."""
    from preprocess.dataset.config import BuildConfig
    from preprocess.dataset.run import build as run_build

    if isinstance(options.get("tasks"), str):
        options["tasks"] = [options["tasks"]]
    return run_build(dataclass_from_options(BuildConfig, options))


def stats(**options: Any) -> dict | list[dict]:
    """``longvlm stats``: ``prefix`` (one dataset, or a list to compare several) and ``plot`` (a PNG
    path) -> the statistics dict, or a list of them (what ``--json`` prints)."""
    from preprocess.dataset.stats_cli import StatsConfig, run

    if isinstance(options.get("prefix"), str):
        options["prefix"] = [options["prefix"]]
    return run(dataclass_from_options(StatsConfig, options))


def convert(action: str, **options: Any) -> Any:
    """``longvlm convert ACTION``: ``action`` is ``"hf-to-megatron"``, ``"megatron-to-hf"``,
    ``"reshard"`` or ``"verify"``; ``options`` are that action's CLI options as keywords::

        api.convert("hf-to-megatron", hf="Qwen2.5-VL-7B-Instruct", out="ckpt", tp=4, pp=2)
        api.convert("megatron-to-hf", ckpt="ckpt", out="hf_out", rope_theta=4.09e6)
        result = api.convert("verify", hf="Qwen2.5-VL-7B-Instruct", ckpt="ckpt", image=["page.png"])

    Returns a ``checkpoint_tools.engine.ConversionResult`` (verify: a
    ``checkpoint_tools.verify.VerifyResult`` with ``passed``). Errors in the inputs raise
    ``megatron_vlm.formats.checkpoint.CheckpointError`` / ``megatron_vlm.models.mapping.MappingError`` and
    write nothing.
    """
    from checkpoint_tools.run import ACTIONS, run

    if action not in ACTIONS:
        raise ValueError(f"unknown convert action {action!r}; choose one of {sorted(ACTIONS)}")
    return run(action, dataclass_from_options(ACTIONS[action].config, options))


def train(recipe: str | dict, *, output: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> int:
    """``longvlm train``: run (or resume) a recipe (a YAML path, a built-in recipe's name such as
    ``"tiny-cpu"``, or a dict of recipe keys) with ``key=value`` overrides in ``output`` (default:
    ``runs/RECIPE_NAME``) on this process's rank; returns 0, or 75 after a preemption signal::

        api.train("recipes/mmprolong-7b-128k.yaml", output="runs/mmprolong", overrides=["parallel.tp=8"])

    Bad recipes raise ``training.config.RecipeError`` before any work (docs/training.md).
    """
    from pathlib import Path

    from training.cli import recipe_path
    from training.config import load_recipe
    from training.trainer import train as run_training

    source = recipe if isinstance(recipe, dict) else recipe_path(recipe)
    name = "recipe" if isinstance(recipe, dict) else Path(source).stem
    return run_training(load_recipe(source, list(overrides)), output or Path("runs") / name)


def tune(**options: Any):
    """``longvlm tune``: options of ``launch.tune.config.TuneConfig`` as keywords (``model`` and ``gpus``
    required)::

        plan = api.tune(model="qwen2.5-vl-7b", gpus=64, global_batch=32, gpu="h100")
        best = plan.ranked[0]   # .layout (ParallelLayout + dp, micro-batch, recompute), .memory, .time

    Returns a ``launch.tune.search.Plan``: feasible layouts fastest first (``ranked``), or, when none
    fits, ``smallest``; with ``write_recipe`` the chosen layout is written into a training recipe.
    """
    from launch.tune.config import TuneConfig
    from launch.tune.run import run

    return run(dataclass_from_options(TuneConfig, options))


def slurm(action: str, **options: Any) -> Any:
    """``longvlm slurm ACTION``: ``action`` is ``"train"``, ``"pool"``, ``"synth"``, ``"status"`` or ``"local"``;
    ``options`` are that action's CLI options as keywords::

        job = api.slurm("train", recipe="recipes/mmprolong-7b-128k.yaml", overrides=["parallel.tp=4"],
                        run_dir="runs/mmprolong", nodes=8, gpus_per_node=8, time="24:00:00", submit=True)
        job = api.slurm("pool", num_shards=64, stage_args=["pdfs.txt", "-o", "pool", "--workers", "8"], submit=True)
        report = api.slurm("status", directory="runs/mmprolong")
        exit_code = api.slurm("local", recipe="tiny-cpu", output="runs/tiny", nproc_per_node=2)

    ``train`` / ``pool`` / ``synth`` return a ``launch.slurm.jobs.Submission`` (``scripts``, ``job_ids``,
    ``directory``); ``status`` the dict ``--json`` prints; ``local`` the exit code (0, or 75 after a save on a
    signal). Bad options, recipes or stage command lines raise ``launch.slurm.options.SlurmError`` or the
    stage's own error before anything is submitted (docs/slurm.md).
    """
    from launch.slurm.cli import ACTIONS, run

    if action not in ACTIONS:
        raise ValueError(f"unknown slurm action {action!r}; choose one of {sorted(ACTIONS)}")
    return run(action, dataclass_from_options(ACTIONS[action][0], options))


def evaluate(task: str, **options: Any):
    """``longvlm eval TASK``: ``task`` is ``"niah"``, ``"docqa"``, ``"mmniah"`` or ``"score"``; ``options`` are that
    task's CLI options as keywords::

        result = api.evaluate("niah", pool="pool", checkpoint="hf_ckpt", output="niah_out", lengths=["32K"])
        result = api.evaluate("docqa", input="samples.json", pdf_dir="documents", backend="openai",
                              model="mmprolong", endpoint="http://vllm:8000/v1", tokenizer="hf_ckpt",
                              output="docqa_out")
        summary = api.evaluate("score", predictions="predictions.jsonl")

    ``niah`` / ``docqa`` return an ``evaluation.run.EvalResult`` (``rows``, ``summary``, ``report``,
    ``files``); ``score`` returns the summary dict (what ``--json`` prints). Bad input raises
    ``evaluation.config.EvalError``.
    """
    if task == "score":
        from evaluation.config import ScoreConfig
        from evaluation.score import run

        return run(dataclass_from_options(ScoreConfig, options))
    from evaluation.run import TASKS, run_task

    if task not in TASKS:
        raise ValueError(f"unknown eval task {task!r}; choose one of score, {', '.join(TASKS)}")
    return run_task(task, dataclass_from_options(TASKS[task].config, options))


def study(action: str, files: list[str], overrides: list[str] | tuple[str, ...] = (), **options: Any) -> Any:
    """``longvlm study run|report``: ``files`` are experiment files (``recipes/study/*.yaml``), ``overrides``
    ``key=value`` items applied to each (``inputs.pool=/data/pool``)::

        steps = api.study("run", ["recipes/study/length-pool-native.yaml"], ["inputs.pool=pool", ...], work="study")
        result = api.study("report", [...], [...], work="study", output="study/report")

    ``run`` returns one ``launch.study.run.StepResult`` per stage (``ran`` or ``reused``); ``report`` a dict
    with the table and the written files (``markdown``, ``csv``, ``figure``). Bad files or options raise
    ``launch.study.experiment.StudyError`` before anything runs.
    """
    from launch.study.cli import ACTIONS

    if action not in ACTIONS:
        raise ValueError(f"unknown study action {action!r}; choose one of {sorted(ACTIONS)}")
    config = dataclass_from_options(ACTIONS[action][0], {"args": [*files, *overrides], **options})
    config.check()
    if action == "report":
        from launch.study.report import report

        return report(list(files), list(overrides), config.work, config.output)
    from launch.study.run import run_experiments

    return run_experiments(list(files), list(overrides), config.work, only=config.only,
                           nproc_per_node=config.nproc_per_node, slurm=config if config.slurm else None)


def demo(**options: Any):
    """``longvlm demo``: the whole pipeline in miniature on one CPU; options of
    ``longvlm.demo.DemoConfig`` as keywords. Returns one ``StageRecord`` per stage."""
    from longvlm.demo import DemoConfig, run_demo

    return run_demo(dataclass_from_options(DemoConfig, options))
