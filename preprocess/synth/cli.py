"""``longvlm synth POOL_DIR -o TASKS.jsonl``: the five LongPT training tasks from a document pool."""

from __future__ import annotations

import argparse

from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args
from preprocess.synth.config import SynthConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Synthesize the LongPT training tasks from a pool: long-document VQA (extract-single, "
        "extract-multi, reasoning; short-to-long: a QA pair is generated from a segment of 8-15 pages "
        "of consecutive sections, anchored to it, and placed back into the whole document) and OCR "
        "transcription (ocr-full, ocr-needle; targets from the layout blocks). Writes TASKS.jsonl, "
        "TASKS.rejected.jsonl (reason per rejection) and TASKS.summary.json (see docs/synth.md).")
    add_dataclass_arguments(parser, SynthConfig)


def interrupted(args: argparse.Namespace) -> str:
    note = ""
    if args.generator == "openai":
        note = f" (the response cache {args.cache_dir or args.output + '.cache'} keeps the finished requests)"
    return f"nothing was written: {args.output} is unchanged; rerun the same command{note}"


def main(args: argparse.Namespace) -> int:
    from preprocess.synth.run import run_synth

    result = run_synth(dataclass_from_args(SynthConfig, args))
    print(result.table)
    if result.generator_stats:
        print("requests: " + ", ".join(f"{k} {v}" for k, v in result.generator_stats.items()))
    print(f"wrote {result.accepted} instances to {result.output} (rejections: {result.rejected_path})")
    return 0 if result.accepted else 1
