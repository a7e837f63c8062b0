"""``longvlm build`` command line: options from ``BuildConfig``, a summary table at the end."""

from __future__ import annotations

import argparse

from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args
from preprocess.dataset.config import BuildConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Writes DATA_PREFIX.json (config, input hashes, report, file sizes and checksums) and "
                     "the megatron-core IndexedDataset files {tokens,targets,images,samples}.bin/.idx in the "
                     "hidden version folder it names; a build replaces an earlier one at DATA_PREFIX in one "
                     "atomic step. See docs/build.md.")
    add_dataclass_arguments(parser, BuildConfig)


def format_report(report: dict) -> str:
    """The human-readable build summary: mixture, lengths, packing, drops."""
    mix, length, packing = report["mixture"], report["length"], report["packing"]
    lines = [f"{'task':<16}{'target':>8}{'achieved':>10}{'samples':>9}{'unique':>8}{'tokens':>15}"]
    for name, t in mix["tasks"].items():
        lines.append(f"{name:<16}{t['target_share']:>8.1%}{t['achieved_share']:>10.1%}{t['samples']:>9}"
                     f"{t['unique_samples']:>8}{t['tokens']:>15,}")
    lines.append(f"budget {mix['budget']:,} tokens, achieved {mix['tokens']:,} "
                 f"({mix['budget_rel_error']:.2%} off); largest share error {mix['max_share_error']:.2%}")
    lines.append(f"\nlength distribution '{length['name']}' (share of examples)")
    lines.append(f"{'bin':<14}{'target':>8}{'achieved':>10}{'examples':>10}{'candidates':>12}")
    for b in length["bins"]:
        lines.append(f"{b['bin']:<14}{b['target']:>8.1%}{b['achieved']:>10.1%}{b['examples']:>10}{b['candidates']:>12}")
    lines.append(f"examples >= {length['long_threshold']:,} tokens: {length['achieved_long_share']:.1%}")
    lines.append(f"\npacking: {packing['samples']} samples into {packing['packs']} sequences of "
                 f"{packing['seq_length']:,}; fill {packing['fill_ratio']:.2%} (no packing of these "
                 f"lengths can exceed {packing['fill_upper_bound']:.2%})")
    drop = report["dropped_too_long"]
    if drop["per_task"]:
        lines.append(f"DROPPED (longer than {drop['seq_length']:,} tokens): "
                     + ", ".join(f"{k}: {v}" for k, v in drop["per_task"].items())
                     + f"; e.g. {', '.join(drop['examples'][:3])}")
    short = report.get("short_data")
    if short:
        lines.append(f"short data: {short['usable']} of {short['records']} records usable, token share "
                     f"{short['achieved_share']:.2%} (target {short['target_share']:.2%}), {short['samples']} samples"
                     + "".join(f"; skipped {n} {reason}" for reason, n in short["skipped"].items()))
    for reason, n in report["skipped"].items():
        lines.append(f"skipped {n} records: {reason}")
    for task, bins in report["mixture"]["length_bins_without_candidates"].items():
        lines.append(f"note: {task} has no candidates in target length bins {bins} (their share went to the others)")
    return "\n".join(lines)


def interrupted(args: argparse.Namespace) -> str:
    return (f"nothing was written: the dataset at {args.output} (if any) is unchanged; rerun the same "
            "command to build it")


def main(args: argparse.Namespace) -> int:
    from preprocess.dataset.run import build

    result = build(dataclass_from_args(BuildConfig, args))
    print(format_report(result.report))
    print(f"\nwrote {result.prefix} ({len(result.files)} files)")
    return 0
