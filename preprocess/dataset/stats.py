"""Statistics of built datasets, computed from their files (not from the build's own report), shown
the way the paper's data tables show them: per task, examples, tokens, mean and percentile lengths
and the share of long examples; and the length distribution, target beside achieved.

Length bins follow the dataset's own range: the paper's bins at 128K scaled to the dataset's
``seq_length`` (``preprocess.dataset.lengths.scaled_edges``), so an 8K-token demo dataset spreads
over six bins instead of falling into one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_vlm.formats import dataset as fmt
from megatron_vlm.formats.dataset import open_dataset, open_indexed, row_length
from preprocess.dataset.lengths import bin_label, histogram, long_threshold, scaled_edges

PERCENTILES = (50, 90, 99)


def _length_summary(lengths: np.ndarray, threshold: int) -> dict:
    if not len(lengths):
        return {"mean_length": 0.0, **{f"p{q}": 0 for q in PERCENTILES}, "max_length": 0, "long_share": 0.0}
    return {"mean_length": float(lengths.mean()),
            **{f"p{q}": int(np.percentile(lengths, q, method="inverted_cdf")) for q in PERCENTILES},
            "max_length": int(lengths.max()), "long_share": float((lengths >= threshold).mean())}


def dataset_stats(prefix: str | Path) -> dict:
    """Per task and overall: examples, tokens (and their share), answer/loss/image tokens, mean and
    percentile lengths, share of long examples; the length histogram per task with the build's
    target; packing fill; image vs text tokens."""
    meta = open_dataset(prefix)  # a truncated or damaged file is named here
    tokens = open_indexed(prefix, meta, fmt.TOKENS)
    samples_ds = open_indexed(prefix, meta, fmt.SAMPLES)
    lengths = np.asarray(tokens.sequence_lengths, dtype=np.int64)
    fields = np.concatenate(samples_ds[0:len(samples_ds)]).reshape(-1, len(fmt.SAMPLE_FIELDS)) \
        if len(samples_ds) else np.zeros((0, len(fmt.SAMPLE_FIELDS)), np.int64)
    task_col, img_col, tgt_col = (fmt.SAMPLE_FIELDS.index(k) for k in ("task", "image_tokens", "target_tokens"))
    names = meta["task_names"]
    seq_length = row_length(meta)
    edges, threshold = scaled_edges(seq_length), long_threshold(seq_length)
    total = int(lengths.sum())
    per_task = {}
    for code in np.unique(fields[:, task_col]):
        rows = fields[:, task_col] == code
        per_task[names[code]] = {
            "samples": int(rows.sum()),
            "tokens": int(lengths[rows].sum()),
            "token_share": float(lengths[rows].sum() / max(total, 1)),
            "answer_tokens": int(fields[rows, tgt_col].sum() - rows.sum()),  # minus the closing <|im_end|>
            "loss_tokens": int(fields[rows, tgt_col].sum()),
            "image_tokens": int(fields[rows, img_col].sum()),
            **_length_summary(lengths[rows], threshold),
            "histogram": [int(c) for c in histogram(lengths[rows], edges)],
        }
    image = int(fields[:, img_col].sum())
    counts = histogram(lengths, edges)
    packs = len(tokens.document_indices) - 1
    target = {b["bin"]: b["target"] for b in meta["report"]["length"]["bins"]} \
        if tuple(b["lo"] for b in meta["report"]["length"]["bins"]) == edges[:-1] else {}
    return {
        "prefix": str(prefix),
        "length_dist": meta["config"]["length_dist"],
        "tasks": per_task,
        "samples": int(len(lengths)),
        "total_tokens": total,
        **_length_summary(lengths, threshold),
        "long_threshold": threshold,
        "image_token_share": image / total if total else 0.0,
        "text_token_share": (total - image) / total if total else 0.0,
        "histogram": [{"bin": bin_label(lo, hi), "lo": lo, "hi": hi, "examples": int(c),
                       "share": float(c / max(counts.sum(), 1)), "target": target.get(bin_label(lo, hi))}
                      for lo, hi, c in zip(edges, edges[1:], counts)],
        "packs": packs,
        "seq_length": seq_length,
        "fill_ratio": total / (packs * seq_length) if packs else 0.0,
    }


def _k(value: float) -> str:
    return f"{value / 1024:.1f}K"


def format_stats(stats: dict) -> str:
    long = f">={_k(stats['long_threshold'])}"
    lines = [f"{stats['prefix']}: {stats['samples']} samples, {stats['total_tokens']:,} tokens "
             f"(length distribution {stats['length_dist']})",
             f"{'task':<16}{'examples':>9}{'tokens':>14}{'share':>7}{'mean':>8}{'p50':>8}{'p90':>8}"
             f"{'max':>8}{long:>9}{'answer tok':>12}"]
    for name, t in [*stats["tasks"].items(), ("all", dict(stats, tokens=stats["total_tokens"], token_share=1.0,
                                                            answer_tokens=sum(t["answer_tokens"] for t in
                                                                              stats["tasks"].values())))]:
        lines.append(f"{name:<16}{t['samples']:>9}{t['tokens']:>14,}{t['token_share']:>7.1%}{_k(t['mean_length']):>8}"
                     f"{_k(t['p50']):>8}{_k(t['p90']):>8}{_k(t['max_length']):>8}{t['long_share']:>9.1%}"
                     f"{t['answer_tokens']:>12,}")
    lines.append(f"\n{'length':<14}{'examples':>10}{'share':>8}{'target':>8}")
    for b in stats["histogram"]:
        target = "-" if b["target"] is None else f"{b['target']:.1%}"
        lines.append(f"{b['bin']:<14}{b['examples']:>10}{b['share']:>8.1%}{target:>8}")
    lines.append(f"\npacking: {stats['packs']} sequences of {stats['seq_length']:,}, fill {stats['fill_ratio']:.2%}")
    lines.append(f"tokens: image {stats['image_token_share']:.1%}, text {stats['text_token_share']:.1%}")
    return "\n".join(lines)


def compare_rows(many: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per figure and one column per dataset: what ``longvlm stats A B`` and the study report print."""
    tasks = list(dict.fromkeys(t for s in many for t in s["tasks"]))
    rows = [["examples", *(f"{s['samples']:,}" for s in many)],
            ["tokens", *(f"{s['total_tokens']:,}" for s in many)],
            ["mean length", *(_k(s["mean_length"]) for s in many)],
            ["p50 / p90 length", *(f"{_k(s['p50'])} / {_k(s['p90'])}" for s in many)],
            ["long examples", *(f"{s['long_share']:.1%} (>={_k(s['long_threshold'])})" for s in many)],
            ["packing fill", *(f"{s['fill_ratio']:.1%}" for s in many)],
            ["image tokens", *(f"{s['image_token_share']:.1%}" for s in many)]]
    rows += [[f"{t} tokens", *(f"{s['tasks'][t]['token_share']:.1%}" if t in s["tasks"] else "-" for s in many)]
             for t in tasks]
    return ["", *(Path(s["prefix"]).name for s in many)], rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def format_comparison(many: list[dict]) -> str:
    return format_table(*compare_rows(many))


def _draw(ax, stats: dict, colours: dict) -> None:
    """Target (outlined) beside achieved (stacked, one colour per task) share of examples per bin."""
    bins = stats["histogram"]
    x = np.arange(len(bins))
    n = max(stats["samples"], 1)
    bottom = np.zeros(len(bins))
    for name, t in stats["tasks"].items():
        share = 100 * np.asarray(t["histogram"]) / n
        ax.bar(x + 0.2, share, 0.4, bottom=bottom, color=colours[name], label=name)
        bottom += share
    if any(b["target"] is not None for b in bins):
        ax.bar(x - 0.2, [100 * (b["target"] or 0) for b in bins], 0.4, fill=False, edgecolor="black",
               hatch="//", label="target")
    ax.set_xticks(x, [b["bin"] for b in bins], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("sample length (tokens)")
    ax.set_title(f"{Path(stats['prefix']).name} ({stats['length_dist']}): {stats['samples']} samples, "
                 f"{stats['long_share']:.0%} >= {_k(stats['long_threshold'])}", fontsize=9)


def plot_lengths(many: list[dict], path: str | Path) -> None:
    """One panel per dataset, side by side: the target and achieved length distributions, one colour
    per task (matplotlib, Agg backend); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megatron_vlm.utils.atomic import atomic_write

    tasks = list(dict.fromkeys(t for s in many for t in s["tasks"]))
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(tasks)}
    fig, axes = plt.subplots(1, len(many), figsize=(5.5 * len(many), 3.8), sharey=True, squeeze=False)
    for ax, stats in zip(axes[0], many):
        _draw(ax, stats, colours)
    axes[0][0].set_ylabel("% of examples")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.86 if len(many) == 1 else 0.92, 1))
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
