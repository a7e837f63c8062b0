"""Which rows each data-parallel rank reads: positions in one global stream, resumable, sharded.

The global stream (``megatron_vlm.data.stream.PackStream``) is an endless sequence of packs. Each
micro-batch step takes the next ``micro_batch_size * dp_size`` positions of it; rank ``r`` gets the
``r``-th slice of ``micro_batch_size``. ``consumed_samples`` (global, as Megatron counts it: packed
rows over all ranks) resumes exactly where a run stopped, on any ``dp_size``: a global batch holds
the same rows whatever the data-parallel size.
"""

from __future__ import annotations

from collections.abc import Iterator


class PackBatchSampler:
    """A batch sampler (``DataLoader(batch_sampler=...)``) yielding this rank's stream positions per micro-batch."""

    def __init__(self, micro_batch_size: int, *, dp_rank: int = 0, dp_size: int = 1, consumed_samples: int = 0,
                 total_samples: int | None = None):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_size})")
        step = micro_batch_size * dp_size
        if micro_batch_size <= 0 or consumed_samples < 0 or consumed_samples % step:
            raise ValueError(f"consumed_samples {consumed_samples} must be a non-negative multiple of "
                             f"micro_batch_size x dp_size = {step}")
        self.mbs, self.rank, self.dp = micro_batch_size, dp_rank, dp_size
        self.consumed, self.total = consumed_samples, total_samples

    def __iter__(self) -> Iterator[list[int]]:
        step = self.mbs * self.dp
        position = self.consumed
        while self.total is None or position + step <= self.total:
            first = position + self.rank * self.mbs
            yield list(range(first, first + self.mbs))
            position += step

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("an endless sampler has no length (pass total_samples)")
        return max(0, (self.total - self.consumed) // (self.mbs * self.dp))
