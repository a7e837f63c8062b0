"""``longvlm convert {hf-to-megatron,megatron-to-hf,reshard,verify}``."""

from __future__ import annotations

import argparse

from checkpoint_tools.config import HFToMegatronConfig, MegatronToHFConfig, ReshardConfig, VerifyConfig
from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args

ACTIONS: dict[str, tuple[type, str]] = {
    "hf-to-megatron": (HFToMegatronConfig,
                       "Hugging Face safetensors (any registered model family) -> Megatron-Core torch_dist checkpoint."),
    "megatron-to-hf": (MegatronToHFConfig,
                       "Megatron-Core torch_dist checkpoint -> Hugging Face directory (safetensors shards, "
                       "index, config with the trained RoPE settings, tokenizer and processor files)."),
    "reshard": (ReshardConfig, "Re-save a Megatron checkpoint for another TP/PP layout."),
    "verify": (VerifyConfig, "Compare the logits of an HF checkpoint and a Megatron checkpoint on a "
                             "multimodal probe (from the HF directory's tokenizer, or from config.json's "
                             "token ids if it has none); exit 1 above --atol, 2 on bad input."),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Run 'longvlm convert ACTION --help' for the options of one action (docs/convert.md)."
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, (cls, summary) in ACTIONS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        add_dataclass_arguments(p, cls)


def config_from_args(args: argparse.Namespace):
    return dataclass_from_args(ACTIONS[args.action][0], args)


def interrupted(args: argparse.Namespace) -> str:
    if args.action == "verify":
        return "nothing was written"
    return f"nothing was written at {args.out}; rerun the same command"


def main(args: argparse.Namespace) -> int:
    from checkpoint_tools.run import run

    result = run(args.action, config_from_args(args))
    if args.action == "verify":
        print(result.to_json() if args.json else result.summary())
        return 0 if result.passed else 1
    print(result.summary())
    return 0
