"""The ``longvlm`` command line: one subcommand per stage of the LongPT pipeline.

Subcommand modules are imported only when that subcommand runs, so ``longvlm --help`` is instant
and does not import torch or megatron-core. A subcommand module provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None
    def main(args: argparse.Namespace) -> int
    def interrupted(args: argparse.Namespace) -> str   # optional: what a Ctrl-C kept, how to resume

Each command is also a Python function in ``longvlm.api``.

Exit status: 0 success, 1 the command's own "not good" result (e.g. ``convert verify``: logits
differ), 2 bad input (``LongVLMError``: one line, no traceback), 70 a bug (its
traceback is printed), 130 Ctrl-C and 143 SIGTERM (one line saying what was kept and how to resume).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback
import warnings
from dataclasses import dataclass

from megatron_vlm import __version__
from megatron_vlm.errors import LongVLMError


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # defines add_arguments(parser) and main(args)
    summary: str


COMMANDS: tuple[Command, ...] = (
    Command("pool", "preprocess.pool.cli",
            "PDFs -> deduplicated, decontaminated, rendered, layout-parsed document pool."),
    Command("synth", "preprocess.synth.cli",
            "Synthesize the five LongPT training tasks (VQA + OCR) from a pool."),
    Command("build", "preprocess.dataset.cli",
            "Tokenize, length-control, mix and pack tasks into Megatron indexed datasets."),
    Command("stats", "preprocess.dataset.stats_cli",
            "Per-task examples, tokens and length percentiles of built datasets; length plots; comparisons."),
    Command("convert", "checkpoint_tools.cli",
            "Convert Qwen2.5-VL checkpoints Hugging Face <-> Megatron, reshard, verify."),
    Command("train", "training.cli", "Continue-pretrain Qwen2.5-VL with Megatron-Core (TP/PP/CP/DP/SP)."),
    Command("tune", "launch.tune.cli",
            "Rank parallel layouts (TP/PP/CP/DP, recompute) by predicted speed and memory for a model, length and cluster."),
    Command("slurm", "launch.slurm.cli",
            "Training and sharded preprocessing on a SLURM cluster (sbatch, job arrays, status); local runs."),
    Command("eval", "evaluation.cli",
            "Needle-in-a-haystack, long-document VQA and MM-NIAH at 32K-512K; scoring of predictions."),
    Command("study", "launch.study.cli",
            "The paper's experiments as files: run what each needs (shared, resumable); report them side by side."),
    Command("demo", "longvlm.demo", "The whole pipeline in miniature on one CPU (a few minutes)."),
)

BUG_EXIT = 70  # EX_SOFTWARE: an unexpected exception (1 stays the commands' own "failed" status)


def _root_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longvlm",
        description="Long-context continued pre-training (LongPT) of Qwen2.5-VL-class models "
        "with Megatron-Core: pool -> synth -> build -> convert -> train -> eval.",
        epilog="Run 'longvlm COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"longvlm {__version__}")
    return parser


def _load(command: Command):
    """The subcommand's module. A module that fails to import is a broken install and keeps its ImportError."""
    return importlib.import_module(command.module)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``selected``'s module is imported (``None``: none are)."""
    parser = _root_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.summary, description=command.summary)
        if command.name == selected:
            module = _load(command)
            module.add_arguments(p)
            p.set_defaults(_main=module.main)
    return parser


# megatron-core warns at import that the optional GPU extras are absent; on a CPU machine that is
# expected, and the warning would repeat in every worker process.
_QUIET_WARNINGS = ("ignore:Transformer Engine and Apex are not installed", "ignore:Apex is not installed")


def main(argv: list[str] | None = None) -> int:
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), *_QUIET_WARNINGS]))
    for rule in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=rule.split(":", 1)[1])
    # deprecation notices of the libraries' own internals are for their developers, not our users
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(torch|megatron)\.")
    warnings.filterwarnings("ignore", message="full scope is deprecated")
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {c.name: c for c in COMMANDS}
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in names else None)
    args, extra = parser.parse_known_args(argv)
    if extra:  # `longvlm train RECIPE -o DIR k=v ...`: positionals after an option are overrides
        if not isinstance(getattr(args, "overrides", None), list) or any(a.startswith("-") for a in extra):
            parser.parse_args(argv)  # argparse's own message for what it does not know
        args.overrides += extra
    run = args._main
    stop = {"signal": signal.SIGINT}

    def on_sigterm(signum, frame):  # SLURM preemption, kill: stop like Ctrl-C (temporaries removed)
        stop["signal"] = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return int(run(args) or 0)
    except LongVLMError as err:
        print(f"longvlm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note = getattr(sys.modules[run.__module__], "interrupted", lambda a: "nothing was written")(args)
        name = signal.Signals(stop["signal"]).name
        print(f"\nlongvlm {args.command}: stopped by {name}; {note}", file=sys.stderr)
        return 128 + stop["signal"]
    except Exception:
        traceback.print_exc()
        print(f"longvlm {args.command}: internal error (a bug: please report it with the traceback above)",
              file=sys.stderr)
        return BUG_EXIT
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
