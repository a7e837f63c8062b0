"""Statistics of a built dataset, computed from its files (not from the build's own report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_vlm.formats import dataset as fmt
from megatron_vlm.formats.dataset import open_dataset, open_indexed
from preprocess.dataset.lengths import DEFAULT_EDGES, bin_label, histogram


def dataset_stats(prefix: str | Path) -> dict:
    """Per-task samples/tokens/answer tokens, length histogram, packing fill, image vs text share."""
    meta = open_dataset(prefix)  # a truncated or damaged file is named here
    tokens = open_indexed(prefix, meta, fmt.TOKENS)
    samples_ds = open_indexed(prefix, meta, fmt.SAMPLES)
    lengths = np.asarray(tokens.sequence_lengths, dtype=np.int64)
    fields = np.concatenate(samples_ds[0:len(samples_ds)]).reshape(-1, len(fmt.SAMPLE_FIELDS)) \
        if len(samples_ds) else np.zeros((0, len(fmt.SAMPLE_FIELDS)), np.int64)
    task_col, img_col, tgt_col = (fmt.SAMPLE_FIELDS.index(k) for k in ("task", "image_tokens", "target_tokens"))
    names = meta["task_names"]
    per_task = {}
    for code in np.unique(fields[:, task_col]):
        rows = fields[:, task_col] == code
        per_task[names[code]] = {
            "samples": int(rows.sum()),
            "tokens": int(lengths[rows].sum()),
            "answer_tokens": int(fields[rows, tgt_col].sum() - rows.sum()),  # minus the closing <|im_end|>
            "loss_tokens": int(fields[rows, tgt_col].sum()),
            "image_tokens": int(fields[rows, img_col].sum()),
        }
    total = int(lengths.sum())
    image = int(fields[:, img_col].sum())
    counts = histogram(lengths, DEFAULT_EDGES)
    packs = len(tokens.document_indices) - 1
    max_seq_len = int(meta["config"]["max_seq_len"])
    return {
        "prefix": str(prefix),
        "tasks": per_task,
        "samples": int(len(lengths)),
        "total_tokens": total,
        "image_token_share": image / total if total else 0.0,
        "text_token_share": (total - image) / total if total else 0.0,
        "histogram": [{"bin": bin_label(lo, hi), "lo": lo, "hi": hi, "examples": int(c),
                       "share": float(c / max(counts.sum(), 1))}
                      for lo, hi, c in zip(DEFAULT_EDGES, DEFAULT_EDGES[1:], counts)],
        "packs": packs,
        "max_seq_len": max_seq_len,
        "fill_ratio": total / (packs * max_seq_len) if packs else 0.0,
    }


def format_stats(stats: dict) -> str:
    lines = [f"{stats['prefix']}: {stats['samples']} samples, {stats['total_tokens']:,} tokens",
             f"{'task':<16}{'samples':>9}{'tokens':>15}{'answer tokens':>15}{'share':>8}"]
    for name, t in stats["tasks"].items():
        share = t["tokens"] / max(stats["total_tokens"], 1)
        lines.append(f"{name:<16}{t['samples']:>9}{t['tokens']:>15,}{t['answer_tokens']:>15,}{share:>8.1%}")
    lines.append(f"\n{'length':<14}{'examples':>10}{'share':>8}")
    for b in stats["histogram"]:
        lines.append(f"{b['bin']:<14}{b['examples']:>10}{b['share']:>8.1%}")
    lines.append(f"\npacking: {stats['packs']} sequences of {stats['max_seq_len']:,}, fill {stats['fill_ratio']:.2%}")
    lines.append(f"tokens: image {stats['image_token_share']:.1%}, text {stats['text_token_share']:.1%}")
    return "\n".join(lines)


def plot_histogram(stats: dict, path: str | Path) -> None:
    """A bar chart of the sample-length histogram (matplotlib, Agg backend), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megatron_vlm.utils.atomic import atomic_write

    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = stats["histogram"]
    ax.bar([b["bin"] for b in bins], [100 * b["share"] for b in bins])
    ax.set_xlabel("sample length (tokens)")
    ax.set_ylabel("% of examples")
    ax.set_title(f"{Path(stats['prefix']).name}: {stats['samples']} samples, fill {stats['fill_ratio']:.1%}")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
