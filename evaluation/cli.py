"""``longvlm eval TASK``: ``score`` (existing predictions), ``niah``, ``docqa`` and ``mmniah`` (run a model)."""

from __future__ import annotations

import argparse
import json

from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args

DESCRIPTION = ("Measure long-context ability: needle-in-a-haystack in real documents (niah), long-document VQA "
               "(docqa: MMLongBench-Doc, LongDocURL, SlideVQA, each scored by its own rules, at one or several "
               "context lengths) and MM-NIAH from its own files (mmniah), on a Hugging Face checkpoint in process "
               "(--backend hf) or on any OpenAI-compatible server (--backend openai, e.g. vLLM for 256K-512K); "
               "or score existing predictions (score). See docs/eval.md.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from evaluation.config import ScoreConfig
    from evaluation.run import TASKS

    parser.description = DESCRIPTION
    sub = parser.add_subparsers(dest="eval_task", metavar="TASK", required=True)
    p = sub.add_parser("score", help="score a predictions JSONL with the MMLongBench-Doc rules (no model)",
                       description="Score existing predictions (question, answer, answer_format, prediction per "
                                   "line) with the MMLongBench-Doc rules; prints Acc, F1 and per-group tables. "
                                   "Predictions are read as data only: nothing in them is ever executed.")
    add_dataclass_arguments(p, ScoreConfig)
    for spec in TASKS.values():
        p = sub.add_parser(spec.name, help=spec.summary, description=spec.summary + " See docs/eval.md.",
                           epilog="Writes OUT_DIR/results.jsonl (one row per example), OUT_DIR/results.json "
                                  "(summary and config)" + (" and OUT_DIR/heatmap.png" if spec.name == "niah" else "")
                                  + "; a rerun resumes.")
        add_dataclass_arguments(p, spec.config)


def main(args: argparse.Namespace) -> int:
    from evaluation.config import ScoreConfig
    from evaluation.run import TASKS, run_task
    from evaluation.score import format_summary, run

    if args.eval_task == "score":
        summary = run(dataclass_from_args(ScoreConfig, args))
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0
    spec = TASKS[args.eval_task]
    result = run_task(spec.name, dataclass_from_args(spec.config, args))
    if not result.files:  # a rank other than 0 of a parallel backend: rank 0 reports
        return 0
    print(result.report)
    if result.failed:
        print(f"{result.failed} example(s) failed (see 'error' in results.jsonl); a rerun retries them")
    print("wrote " + ", ".join(str(f) for f in result.files))
    return 1 if result.failed else 0
