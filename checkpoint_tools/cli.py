"""``longvlm convert {hf-to-megatron,megatron-to-hf,reshard,verify}``."""

from __future__ import annotations

import argparse

from checkpoint_tools.run import ACTIONS, run
from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Run 'longvlm convert ACTION --help' for the options of one action (docs/convert.md)."
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, action in ACTIONS.items():
        p = sub.add_parser(name, help=action.summary, description=action.summary)
        add_dataclass_arguments(p, action.config)


def config_from_args(args: argparse.Namespace):
    return dataclass_from_args(ACTIONS[args.action].config, args)


def interrupted(args: argparse.Namespace) -> str:
    if args.action == "verify":
        return "nothing was written"
    return f"nothing was written at {args.out}; rerun the same command"


def main(args: argparse.Namespace) -> int:
    result = run(args.action, config_from_args(args))
    if args.action == "verify":
        print(result.to_json() if args.json else result.summary())
        return 0 if result.passed else 1
    print(result.summary())
    return 0
