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

from megatron_vlm.errors import ConfigError
from megatron_vlm.flops import FlopCount, model_flops
from megatron_vlm.formats.dataset import row_length
from megatron_vlm.models.geometry import ImageGeometry
from megatron_vlm.models.hf_config import VLArch

A4_POINTS = (595, 842)  # page size in PostScript points (1/72 inch)


@dataclass(frozen=True)
class Row:
    """One packed row: sample lengths (padding is the last segment), image grids ``(t, h, w)``, answer tokens."""

    segments: tuple[int, ...]
    image_grids: tuple[tuple[int, int, int], ...]
    answer_tokens: int
    merge_size: int = 2  # the model family's spatial merge: image tokens = patches / merge^2

    @property
    def tokens(self) -> int:
        return sum(self.segments)

    @property
    def patches(self) -> int:
        return sum(t * h * w for t, h, w in self.image_grids)

    @property
    def image_tokens(self) -> int:
        return self.patches // self.merge_size ** 2


@dataclass(frozen=True)
class Workload:
    """Rows of ``seq_length`` tokens; ``source`` says where they come from (shown in reports)."""

    seq_length: int
    rows: tuple[Row, ...]
    source: str

    @cached_property
    def peak_row(self) -> Row:
        """The row memory is planned for: the longest row's samples, the images of the row with the most
        image patches and the most answer tokens of any row."""
        longest = max(self.rows, key=lambda r: (r.tokens, len(r.segments)))
        images = max(self.rows, key=lambda r: r.patches)
        return Row(longest.segments, images.image_grids, max(r.answer_tokens for r in self.rows), images.merge_size)

    @cached_property
    def mean_row(self) -> Row:
        """The row step times are planned for: the one closest to the mean length (answer tokens: the mean)."""
        mean = sum(r.tokens for r in self.rows) / len(self.rows)
        row = min(self.rows, key=lambda r: abs(r.tokens - mean))
        return Row(row.segments, row.image_grids, round(sum(r.answer_tokens for r in self.rows) / len(self.rows)))

    @property
    def mean_tokens(self) -> float:
        return sum(r.tokens for r in self.rows) / len(self.rows)

    def mean_flops(self, arch: VLArch) -> FlopCount:
        """Model FLOPs of one row, averaged over the rows."""
        total = None
        for row in self.rows:
            count = model_flops(arch, row.segments, row.image_grids, row.answer_tokens)
            total = count if total is None else total + count
        n = len(self.rows)
        return FlopCount(total.forward.scale(1 / n), total.backward.scale(1 / n))

    def describe(self) -> str:
        r = self.peak_row
        return (f"{self.source}: rows of up to {self.seq_length:,} tokens (mean {self.mean_tokens:,.0f}); heaviest: "
                f"{len(r.segments)} samples, {len(r.image_grids)} images ({r.image_tokens:,} image tokens), "
                f"{r.answer_tokens:,} answer tokens")


def page_grid(dpi: float, geometry: ImageGeometry, page_points: tuple[int, int] = A4_POINTS) -> tuple[int, int, int]:
    """The ``(t, h, w)`` patch grid of a page rendered at ``dpi`` (the family ``geometry``'s smart_resize)."""
    width, height = (round(p * dpi / 72) for p in page_points)
    return geometry.grid_thw(*geometry.smart_resize(height, width))


def synthetic_workload(seq_length: int, geometry: ImageGeometry, *, sample_tokens: int | None = None, dpi: float = 144.0,
                       image_share: float = 0.9, answer_tokens: int = 1024) -> Workload:
    """Rows packed with ``seq_length // sample_tokens`` samples (rest: padding), each sample
    ``image_share`` page images of A4 pages at ``dpi`` (at the model family's ``geometry``); ``answer_tokens``
    loss tokens per row."""
    sample = sample_tokens or seq_length
    if not 0 < sample <= seq_length:
        raise ConfigError(f"--sample-tokens {sample} must be in 1..--seq-length ({seq_length})")
    if not 0 <= image_share < 1:
        raise ConfigError(f"--image-share {image_share} must be in [0, 1)")
    grid = page_grid(dpi, geometry)
    page_tokens = grid[0] * grid[1] * grid[2] // geometry.merge_size ** 2
    pages = int(sample * image_share) // page_tokens
    samples = seq_length // sample
    segments = [sample] * samples + ([seq_length - samples * sample] if seq_length % sample else [])
    row = Row(tuple(segments), (grid,) * (pages * samples), min(answer_tokens, seq_length), geometry.merge_size)
    return Workload(seq_length, (row,), f"synthetic ({samples} x {sample:,}-token samples, {pages} pages of "
                                     f"{page_tokens:,} tokens each at {dpi:g} dpi)")


def dataset_workload(prefixes: list[str], seq_length: int | None = None, *, max_rows: int = 2000) -> Workload:
    """Rows of built datasets (``longvlm build -o PREFIX``), evenly spaced, at most ``max_rows`` in all.

    Rows train at their own length (the loader pads a micro-batch only to its longest row), so a row is
    its packed samples; ``seq_length`` (default: the datasets' ``seq_length``) is the longest allowed.
    """
    from megatron_vlm.data.dataset import BuiltDataset

    datasets = [(p, BuiltDataset(p, check_pool=False, decode_images=False)) for p in prefixes]
    longest = max(row_length(d.meta) for _, d in datasets)
    seq_length = seq_length or longest
    rows = []
    for prefix, data in datasets:
        if row_length(data.meta) > seq_length:
            raise ConfigError(f"dataset {prefix} was packed to {int(data.meta['config']['seq_length']):,} tokens, "
                              f"longer than --seq-length {seq_length:,}")
        if len(data) == 0:
            raise ConfigError(f"dataset {prefix} holds no packed rows")
        count = max(1, max_rows // len(datasets))
        for i in np.unique(np.linspace(0, len(data) - 1, min(count, len(data))).round().astype(int)):
            item = data[int(i)]
            rows.append(Row(tuple(int(n) for n in np.diff(item["cu_seqlens"])),
                            tuple(tuple(int(x) for x in g) for g in item["image_grid_thw"]),
                            int(np.asarray(item["targets"]).sum()), data.geometry.merge_size))
    return Workload(seq_length, tuple(rows), f"{', '.join(prefixes)} ({len(rows)} rows read)")


__all__ = ["Row", "Workload", "dataset_workload", "page_grid", "synthetic_workload"]
