"""``longvlm slurm {train,pool,synth,status,local}``: run training and the preprocessing stages on a
SLURM cluster (or, ``local``, on this machine without one)."""

from __future__ import annotations

import argparse

from launch.slurm.options import LocalRunConfig, StageJobConfig, StatusConfig, TrainJobConfig
from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args

_TRAIN = """\
Write the sbatch script of a training run and, with --submit, submit it. The recipe is checked for
the job's world size (nodes x ranks) before anything is written; RUN_DIR/config.yaml is written now
and the job trains it: one srun task per GPU running `longvlm train RUN_DIR/config.yaml -o RUN_DIR`.
Before the time limit (--signal-seconds) the ranks get SIGUSR1, save and exit 75, and the job
requeues itself (or, with --chain, the next job starts); every start resumes from the latest
checkpoint."""
_TRAIN_EPILOG = """\
examples:
  longvlm slurm train recipes/mmprolong-7b-128k.yaml --nodes 8 --gpus-per-node 8 --partition gpu \\
      --time 24:00:00 --venv /shared/venv --run-dir /shared/runs/mmprolong --submit
  longvlm slurm train tiny-cpu --nodes 1 --gpus-per-node 0 --tasks-per-node 2 train.train_steps=40
Guide: docs/slurm.md."""
_STAGE = """\
Write a job array that runs `longvlm {stage}` sharded (--shard K --num-shards N, one array task per
shard, outputs in OUTPUT.shards/) and a merge job that starts when every task succeeded (afterok)
and writes OUTPUT, the same as one unsharded run. With --submit, submit both."""
_STAGE_EPILOG = {
    "pool": """\
example:
  longvlm slurm pool --num-shards 64 --partition cpu --time 04:00:00 --submit -- \\
      /data/pdfs.txt -o /data/pool --workers 16 --exclude-hashes /data/eval_sha256.txt
Guide: docs/slurm.md.""",
    "synth": """\
example:
  longvlm slurm synth --num-shards 16 --submit -- /data/pool -o /data/tasks.jsonl \\
      --generator openai --endpoint http://vlm:8000/v1 --model Qwen/Qwen2.5-VL-72B-Instruct
Guide: docs/slurm.md.""",
}

_STATUS = "Show the jobs of a run directory (or of a sharded stage's output), its latest checkpoint and last metrics."
_LOCAL = ("Run a training recipe on this machine without SLURM: one rank per GPU (torchrun's variables), "
          "signals passed on, exit 75 after a save on a signal.")

# action -> (config dataclass, one-line summary, description, epilog)
ACTIONS: dict[str, tuple[type, str, str, str]] = {
    "train": (TrainJobConfig, "write (and submit) the sbatch script of a training run", _TRAIN, _TRAIN_EPILOG),
    "pool": (StageJobConfig, "longvlm pool as a job array of shards plus their merge", _STAGE.format(stage="pool"),
             _STAGE_EPILOG["pool"]),
    "synth": (StageJobConfig, "longvlm synth as a job array of shards plus their merge",
              _STAGE.format(stage="synth"), _STAGE_EPILOG["synth"]),
    "status": (StatusConfig, "the jobs of a run or stage, its latest checkpoint and metrics", _STATUS,
               "--json prints the same as one JSON object."),
    "local": (LocalRunConfig, "a training recipe on this machine without SLURM (torchrun equivalent)", _LOCAL,
              "example:\n  longvlm slurm local recipes/mmprolong-7b-128k.yaml -o runs/mmprolong\n"
              "Guide: docs/slurm.md."),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run training and the preprocessing stages on a SLURM cluster: sbatch scripts, "
                          "job arrays, status; or a training recipe on this machine without SLURM (local).")
    parser.epilog = "Run 'longvlm slurm ACTION --help' for the options of one action (docs/slurm.md)."
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, (cls, summary, description, epilog) in ACTIONS.items():
        p = sub.add_parser(name, help=summary, description=description, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_dataclass_arguments(p, cls)


def run(action: str, config):
    """Run one action on its config; what ``longvlm.api.slurm`` returns."""
    if action == "train":
        from launch.slurm.train_job import train_job

        return train_job(config)
    if action in ("pool", "synth"):
        from launch.slurm.stage_job import stage_job

        return stage_job(action, config)
    if action == "status":
        from launch.slurm.status import run_status

        return run_status(config)
    from launch.slurm.local import run_local

    return run_local(config)


def main(args: argparse.Namespace) -> int:
    config = dataclass_from_args(ACTIONS[args.action][0], args)
    result = run(args.action, config)
    if args.action == "local":
        return result
    if args.action == "status":
        from launch.slurm.status import format_status, to_json

        print(to_json(result) if config.json else format_status(result))
        return 0
    print(result.summary())
    return 0
