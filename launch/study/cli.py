"""``longvlm study run|report FILE... [key=value ...]``: the paper's study, one experiment per file."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from launch.slurm.options import SchedulerOptions
from launch.study.experiment import StudyError
from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args

_SLURM = "SLURM (--slurm; the scheduler options above apply to its jobs)"
_ARGS_HELP = ("experiment files (recipes/study/*.yaml), then key=value overrides applied to each of them, "
              "e.g. inputs.pool=/data/pool inputs.base_model=/ckpt/Qwen2.5-VL-7B-Instruct")


@dataclass(kw_only=True)
class StudyRunConfig(SchedulerOptions):
    args: list[str] = field(metadata={"positional": True, "metavar": "FILE|KEY=VALUE", "help": _ARGS_HELP})
    work: str = field(default="study", metadata={"metavar": "DIR", "help": (
        "where artifacts go (DIR/synth, build, train, export, eval: one folder per artifact key; "
        "DIR/experiments/NAME.json); shared by all experiments, so each artifact is made once")})
    only: list[str] | None = field(default=None, metadata={"metavar": "STAGE", "help": (
        "run only these stages (synth, build, train, sft-build, sft-train, export, eval-NAME); the stages "
        "they need must be done")})
    nproc_per_node: int | None = field(default=None, metadata={"help": (
        "training ranks on this machine (default: one per GPU, 1 without a GPU)")})
    dry_run: bool = field(default=False, metadata={"help": (
        "print each experiment's stages, artifact keys and whether they are done; run nothing")})
    slurm: bool = field(default=False, metadata={"group": _SLURM, "help": (
        "run the stages as SLURM jobs instead of here: write the jobs of the steps that can start now into "
        "WORK/slurm/ (with --submit: submit them); each job submits the next steps when it ends, training "
        "goes through 'longvlm slurm train'")})
    nodes: int = field(default=1, metadata={"group": _SLURM, "help": "--slurm: nodes of each training job"})
    gpus_per_node: int = field(default=8, metadata={"group": _SLURM, "help": (
        "--slurm: GPUs per node of the training jobs (one rank each) and of the evaluation jobs; 0: CPU tasks")})


@dataclass
class StudyReportConfig:
    args: list[str] = field(metadata={"positional": True, "metavar": "FILE|KEY=VALUE", "help": _ARGS_HELP})
    work: str = field(default="study", metadata={"metavar": "DIR", "help": "the work directory of 'study run'"})
    output: str = field(default="study/report", metadata={"flag": "-o", "metavar": "PREFIX", "help": (
        "writes PREFIX.md (Markdown table), PREFIX.csv and PREFIX.png (length distributions and scores)")})


ACTIONS = {"run": (StudyRunConfig, "run the stages the experiments need (resumable; artifacts shared)"),
           "report": (StudyReportConfig, "the experiments' data statistics and scores side by side")}


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(experiment files, key=value overrides); a word with '=' that is not a file is an override."""
    files = [a for a in args if "=" not in a or Path(a).is_file()]
    overrides = [a for a in args if a not in files]
    if not files:
        raise StudyError("give at least one experiment file (e.g. recipes/study/length-pool-native.yaml)")
    return files, overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("The paper's study, runnable: every experiment one file (recipes/study/). 'run' makes what "
                          "each experiment needs (synth -> build -> train -> export -> eval), reusing what an earlier "
                          "experiment made and resuming after a kill; 'report' puts them side by side. See docs/study.md.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, (cls, summary) in ACTIONS.items():
        add_dataclass_arguments(sub.add_parser(name, help=summary, description=summary), cls)


def interrupted(args: argparse.Namespace) -> str:
    from launch.study.run import interrupted_note

    return interrupted_note(getattr(args, "work", "study"))


def main(args: argparse.Namespace) -> int:
    config = dataclass_from_args(ACTIONS[args.action][0], args)
    files, overrides = split_args(config.args)
    if args.action == "report":
        from launch.study.report import report

        result = report(files, overrides, config.work, config.output)
        print(result["files"]["markdown"].read_text(), end="")
        print("wrote " + ", ".join(str(p) for p in result["files"].values()))
        return 0
    if config.nproc_per_node is not None and config.nproc_per_node < 1:
        raise StudyError(f"--nproc-per-node must be >= 1, got {config.nproc_per_node}")
    from launch.study.run import format_plan, format_results, run_experiments

    if config.dry_run:
        print(format_plan(files, overrides, config.work))
        return 0
    results = run_experiments(files, overrides, config.work, only=config.only, nproc_per_node=config.nproc_per_node,
                              slurm=config if config.slurm else None)
    if results:
        print(format_results(results))
    return 0
