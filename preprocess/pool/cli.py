"""``longvlm pool INPUT... -o POOL_DIR``: build, resume or merge a document pool."""

from __future__ import annotations

import argparse
import signal
import sys

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

    # SLURM preemption and `kill` send SIGTERM: exit through the normal cleanup (workers stopped,
    # temporary files removed); a rerun resumes from the finished chunks.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(run(dataclass_from_args(PoolConfig, args)))
    return 0
