"""``longvlm stats DATA_PREFIX``: per-task tokens, length histogram, packing fill of a built dataset."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args


@dataclass
class StatsConfig:
    prefix: str = field(metadata={"positional": True, "metavar": "DATA_PREFIX",
                                  "help": "a dataset written by 'longvlm build -o DATA_PREFIX'"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of tables"})
    plot: str | None = field(default=None, metadata={
        "metavar": "PNG", "help": "also write the length histogram as a PNG to this path"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, StatsConfig)


def run(config: StatsConfig) -> dict:
    from preprocess.dataset.stats import dataset_stats, plot_histogram

    stats = dataset_stats(config.prefix)
    if config.plot:
        plot_histogram(stats, config.plot)
    return stats


def main(args: argparse.Namespace) -> int:
    from preprocess.dataset.stats import format_stats

    config = dataclass_from_args(StatsConfig, args)
    stats = run(config)
    print(json.dumps(stats) if config.json else format_stats(stats))
    return 0
