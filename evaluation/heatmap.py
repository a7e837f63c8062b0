"""The NIAH length x depth heatmap (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from megatron_vlm.utils.atomic import atomic_write


def _label(length: str) -> str:
    n = int(length)
    return f"{n // 1024}K" if n % 1024 == 0 else length


def plot_grid(grid: dict[str, dict[str, dict[str, float | None]]], metric: str, path: str | Path) -> None:
    """One panel per needle mode: rows are context lengths, columns depths, cells the mean ``metric``
    (0 red .. 1 green; empty cells grey), each cell annotated with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modes = list(grid)
    lengths = list(next(iter(grid.values())))
    depths = list(next(iter(next(iter(grid.values())).values())))
    fig, axes = plt.subplots(1, len(modes), figsize=(1.1 * len(depths) * len(modes) + 2, 0.6 * len(lengths) + 1.8),
                             squeeze=False, constrained_layout=True)
    cmap = matplotlib.colormaps["RdYlGn"].copy()
    cmap.set_bad("#dddddd")
    image = None
    for ax, mode in zip(axes[0], modes):
        values = np.array([[np.nan if grid[mode][length][d] is None else grid[mode][length][d] for d in depths]
                           for length in lengths], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(depths)), [f"{float(d):.0%}" for d in depths])
        ax.set_yticks(range(len(lengths)), [_label(v) for v in lengths])
        ax.set_xlabel("needle depth")
        ax.set_ylabel("context length (tokens)")
        ax.set_title(f"needle: {mode}")
        for i in range(len(lengths)):
            for j in range(len(depths)):
                if not np.isnan(values[i, j]):
                    dark = values[i, j] < 0.25 or values[i, j] > 0.85  # the colormap's dark ends
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
    fig.colorbar(image, ax=axes[0].tolist(), label=metric, shrink=0.9)
    with atomic_write(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
