"""What a training row holds: packed sample lengths, page images and answer tokens.

The cost of a VLM row depends on its content, not only on its length: attention grows with each
packed sample's length, the vision tower with the number and shape of the page images, the
output layer with the answer (``loss_mask``) tokens. A :class:`Workload` is a set of rows: read from
a built dataset (``longvlm build``), or synthesized from a few numbers (sample length, page size,
image share, answer tokens) when there is no dataset yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from megatron_vlm.data.vision import MERGE_SIZE, grid_thw, smart_resize
from megatron_vlm.errors import ConfigError
from megatron_vlm.flops import FlopCount, model_flops
from megatron_vlm.models.config import Qwen25VLConfig

A4_POINTS = (595, 842)  # page size in PostScript points (1/72 inch)


@dataclass(frozen=True)
class Row:
    """One packed row: sample lengths (padding is the last segment), image grids ``(t, h, w)``, answer tokens."""

    segments: tuple[int, ...]
    image_grids: tuple[tuple[int, int, int], ...]
    answer_tokens: int

    @property
    def tokens(self) -> int:
        return sum(self.segments)

    @property
    def patches(self) -> int:
        return sum(t * h * w for t, h, w in self.image_grids)

    @property
    def image_tokens(self) -> int:
        return self.patches // MERGE_SIZE ** 2


@dataclass(frozen=True)
class Workload:
    """Rows of ``seq_len`` tokens; ``source`` says where they come from (shown in reports)."""

    seq_len: int
    rows: tuple[Row, ...]
    source: str

    @cached_property
    def peak_row(self) -> Row:
        """The row memory is planned for: the most image patches, and the most answer tokens of any row."""
        row = max(self.rows, key=lambda r: (r.patches, len(r.segments)))
        return Row(row.segments, row.image_grids, max(r.answer_tokens for r in self.rows))

    def mean_flops(self, config: Qwen25VLConfig) -> FlopCount:
        """Model FLOPs of one row, averaged over the rows."""
        total = None
        for row in self.rows:
            count = model_flops(config, row.segments, row.image_grids, row.answer_tokens)
            total = count if total is None else total + count
        n = len(self.rows)
        return FlopCount(total.forward.scale(1 / n), total.backward.scale(1 / n))

    def describe(self) -> str:
        r = self.peak_row
        return (f"{self.source}: rows of {self.seq_len:,} tokens; heaviest row {len(r.segments)} segments, "
                f"{len(r.image_grids)} images ({r.image_tokens:,} image tokens), {r.answer_tokens:,} answer tokens")


def page_grid(dpi: float, page_points: tuple[int, int] = A4_POINTS) -> tuple[int, int, int]:
    """The ``(t, h, w)`` patch grid of a page rendered at ``dpi`` (Qwen2.5-VL's smart_resize)."""
    width, height = (round(p * dpi / 72) for p in page_points)
    return grid_thw(*smart_resize(height, width))


def synthetic_workload(seq_len: int, *, sample_tokens: int | None = None, dpi: float = 144.0,
                       image_share: float = 0.9, answer_tokens: int = 1024) -> Workload:
    """Rows packed with ``seq_len // sample_tokens`` samples (rest: padding), each sample
    ``image_share`` page images of A4 pages at ``dpi``; ``answer_tokens`` loss tokens per row."""
    sample = sample_tokens or seq_len
    if not 0 < sample <= seq_len:
        raise ConfigError(f"--sample-tokens {sample} must be in 1..--seq-len ({seq_len})")
    if not 0 <= image_share < 1:
        raise ConfigError(f"--image-share {image_share} must be in [0, 1)")
    grid = page_grid(dpi)
    page_tokens = grid[0] * grid[1] * grid[2] // MERGE_SIZE ** 2
    pages = int(sample * image_share) // page_tokens
    samples = seq_len // sample
    segments = [sample] * samples + ([seq_len - samples * sample] if seq_len % sample else [])
    row = Row(tuple(segments), (grid,) * (pages * samples), min(answer_tokens, seq_len))
    return Workload(seq_len, (row,), f"synthetic ({samples} x {sample:,}-token samples, {pages} pages of "
                                     f"{page_tokens:,} tokens each at {dpi:g} dpi)")


def dataset_workload(prefix: str, seq_len: int, *, max_rows: int = 2000) -> Workload:
    """Rows of a built dataset (``longvlm build -o PREFIX``), evenly spaced, at most ``max_rows``."""
    from megatron_vlm.data.dataset import BuiltDataset

    data = BuiltDataset(prefix, check_pool=False, decode_images=False)
    built_len = int(data.meta["config"]["max_seq_len"])
    if built_len > seq_len:
        raise ConfigError(f"--data {prefix} was packed to {built_len:,} tokens, longer than --seq-len {seq_len:,}")
    if len(data) == 0:
        raise ConfigError(f"--data {prefix} holds no packed rows")
    picks = np.unique(np.linspace(0, len(data) - 1, min(max_rows, len(data))).round().astype(int))
    rows = []
    for i in picks:
        item = data[int(i)]
        lengths = np.diff(item["cu_seqlens"]).tolist()
        pad = seq_len - int(sum(lengths))
        rows.append(Row(tuple(int(n) for n in lengths) + ((pad,) if pad else ()),
                        tuple(tuple(int(x) for x in g) for g in item["image_grid_thw"]),
                        int(np.asarray(item["targets"]).sum())))
    return Workload(seq_len, tuple(rows), f"{prefix} ({len(rows)} of {len(data)} rows)")


__all__ = ["Row", "Workload", "dataset_workload", "page_grid", "synthetic_workload"]
