"""``longvlm tune``: rank the parallel layouts of a training run (any registered model family) by predicted speed.

    longvlm tune --model qwen2.5-vl-7b --seq-length 131072 --gpus 64 --gpus-per-node 8 --gpu h100 \\
        --global-batch 32 [--data DATA_PREFIX] [--explain 1] [--json] [--write-recipe OUT.yaml]

``--model`` is a preset, a Hugging Face checkpoint, a Megatron checkpoint or a training recipe; a
recipe also supplies the sequence length, global batch, precision, attention backend, optimizer
sharding, datasets and loader settings (options given on the command line win).
"""

from __future__ import annotations

import argparse
import json

from launch.tune.config import TuneConfig
from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Rank the parallel layouts (TP, PP, CP, DP, SP, micro-batch, recompute, first-stage "
                          "layers) of a training run (any registered model family) by predicted step time, with predicted peak memory "
                          "per GPU. The cost model knows the VLM: vision tower on the first pipeline stage, images "
                          "split over CP ranks, answer-only logits, attention at the packed samples' real lengths "
                          "(docs/tune.md). Exits 1 when no layout fits, with the reason.")
    add_dataclass_arguments(parser, TuneConfig)


def main(args: argparse.Namespace) -> int:
    from launch.tune.report import explain, format_table, plan_dict
    from launch.tune.run import run

    config = dataclass_from_args(TuneConfig, args)
    result = run(config)
    layers = result.arch.num_layers
    # with nothing that fits, --explain breaks down the layout that comes closest
    chosen = result.ranked[(config.explain or 1) - 1] if result.ranked else result.smallest
    if config.json:
        out = plan_dict(result, layers, config.top)
        if config.explain is not None and chosen is not None:
            from launch.tune.report import candidate_dict

            out["explained"] = candidate_dict(chosen, layers)
        print(json.dumps(out, indent=1))
    else:
        print(format_table(result, layers, config.top))
        if config.explain is not None and chosen is not None:
            print()
            print(explain(chosen, result, layers))
    if result.written_recipe and not config.json and chosen is not None:
        print(f"\nwrote {result.written_recipe} ({chosen.layout.label()}, recompute {chosen.layout.recompute_label})")
    return 0 if result.ranked else 1
