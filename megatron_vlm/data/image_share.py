"""Which images of a micro-batch a rank decodes, so page decoding scales with data parallelism only.

Only the first pipeline stage runs the vision tower. With context parallelism each CP rank encodes a
contiguous range of the micro-batch's images, split by patch count (the model's own
``split_images_by_cost``); the TP ranks of that CP rank all need those images' pixels. So each rank
of the first stage decodes a 1/TP part of its CP range (split again by patch count) and the TP ranks
all-gather the parts: every page is decoded once per model replica, by one rank, and stages without
the vision tower decode nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_vlm.models.context_parallel import all_gather_varlen, split_images_by_cost


@dataclass(frozen=True)
class ImageShare:
    """A rank's place for image work: ``decode=False`` on pipeline stages without the vision tower."""

    decode: bool = True
    cp_size: int = 1
    cp_rank: int = 0
    tp_size: int = 1
    tp_rank: int = 0

    def cp_range(self, patches: list[int]) -> tuple[int, int]:
        """``[first, last)`` images this rank's CP rank encodes (all images without CP)."""
        return split_images_by_cost(patches, self.cp_size)[self.cp_rank]

    def tp_ranges(self, patches: list[int]) -> list[tuple[int, int]]:
        """The CP range cut into one ``[first, last)`` part per TP rank (by patch count)."""
        first, last = self.cp_range(patches)
        return [(first + a, first + b) for a, b in split_images_by_cost(patches[first:last], self.tp_size)]

    def own_range(self, patches: list[int]) -> tuple[int, int]:
        """``[first, last)`` images this rank decodes (empty when it decodes none)."""
        if not self.decode:
            return 0, 0
        return self.tp_ranges(patches)[self.tp_rank]


def gather_pixels(pixel_values: torch.Tensor, patches: list[int], share: ImageShare, tp_group) -> torch.Tensor:
    """The pixels of this rank's CP range from the TP ranks' decoded parts (``pixel_values``: this rank's part)."""
    if share.tp_size == 1:
        return pixel_values
    sizes = [sum(patches[a:b]) for a, b in share.tp_ranges(patches)]
    return all_gather_varlen(pixel_values, sizes, tp_group)
