"""``longvlm stats DATA_PREFIX [DATA_PREFIX ...]``: the paper's data table of a built dataset (per task:
examples, tokens, mean and percentile lengths, share of long examples), its length distribution
beside the build's target; with several datasets, one comparison table and one figure."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args


@dataclass
class StatsConfig:
    prefix: list[str] = field(metadata={
        "positional": True, "metavar": "DATA_PREFIX",
        "help": "datasets written by 'longvlm build -o DATA_PREFIX'; several are compared side by side"})
    json: bool = field(default=False, metadata={"help": "print JSON (one object, or a list for several datasets)"})
    plot: str | None = field(default=None, metadata={
        "metavar": "PNG", "help": "also write the length distributions (target beside achieved, one colour "
                                  "per task; one panel per dataset) as a PNG to this path"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, StatsConfig)


def run(config: StatsConfig) -> dict | list[dict]:
    """The statistics of the dataset (a list of them for several), and the plot if asked."""
    from preprocess.dataset.stats import dataset_stats, plot_lengths

    prefixes = [config.prefix] if isinstance(config.prefix, str) else config.prefix
    many = [dataset_stats(p) for p in prefixes]
    if config.plot:
        plot_lengths(many, config.plot)
    return many[0] if len(many) == 1 else many


def main(args: argparse.Namespace) -> int:
    from preprocess.dataset.stats import format_comparison, format_stats

    config = dataclass_from_args(StatsConfig, args)
    stats = run(config)
    if config.json:
        print(json.dumps(stats))
    else:
        print(format_stats(stats) if isinstance(stats, dict) else format_comparison(stats))
    return 0
