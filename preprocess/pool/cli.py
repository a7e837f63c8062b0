"""``longvlm pool INPUT... -o POOL_DIR``: build, resume or merge a document pool."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args
from preprocess.pool.config import PoolConfig

EPILOG = """\
Rejected inputs are listed with a reason in POOL_DIR/rejected.jsonl; the run never stops on a bad
file. Rerunning the same command resumes an interrupted run (finished chunks are kept) and does
nothing for a complete pool. At scale, run one shard per array task and merge:
  longvlm pool pdfs/ -o pool.shard$I --shard $I --num-shards 64
  longvlm pool --merge pool.shard* -o pool
Output format: docs/formats.md ("Document pool"); guide: docs/pool.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Turn PDFs into a deduplicated, decontaminated document pool (paper section 4.1): every\n"
        "page rendered at --dpi and resized to the Qwen2.5-VL grid, with layout blocks and sections,\n"
        "stored in Megatron indexed datasets. Documents are identified by the SHA-256 of their bytes.")
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_dataclass_arguments(parser, PoolConfig)


def main(args: argparse.Namespace) -> int:
    from preprocess.pool.run import run

    config = dataclass_from_args(PoolConfig, args)
    result = run(config)
    print(result)
    if result.accepted == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.reasons.items(), key=lambda kv: -kv[1]))
        print(f"warning: no document was accepted ({reasons or 'no inputs'}; see "
              f"{result.output}/rejected.jsonl)", file=sys.stderr)
        return 0 if config.allow_empty else 1
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """What a Ctrl-C (or SIGTERM) keeps: the finished chunks, in the work folder beside the pool."""
    if args.merge:
        return f"nothing was written at {args.output}; rerun the same command"
    from preprocess.pool.build import work_dir

    return (f"finished chunks are kept in {work_dir(Path(args.output))}; rerun the same command to resume "
            "(the pool will be identical to an uninterrupted run's)")
