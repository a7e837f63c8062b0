"""Which packed sequences each data-parallel rank reads: seeded order, resumable, sharded.

The global stream is an endless series of epochs; epoch ``e`` visits every pack once in the order
``default_rng([seed, e]).permutation(num_packs)`` (or in file order with ``shuffle=False``). Each
step takes the next ``micro_batch_size * dp_size`` positions of the stream; rank ``r`` gets the
``r``-th slice of ``micro_batch_size``. ``consumed_samples`` (global, as Megatron counts it:
packed sequences over all ranks) resumes exactly where a run stopped, on any ``dp_size``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class PackBatchSampler:
    """A batch sampler (``DataLoader(batch_sampler=...)``) yielding this rank's pack indices per step."""

    def __init__(self, num_packs: int, micro_batch_size: int, *, dp_rank: int = 0, dp_size: int = 1,
                 seed: int = 1234, consumed_samples: int = 0, total_samples: int | None = None,
                 shuffle: bool = True):
        if num_packs <= 0:
            raise ValueError("the dataset has no packed sequences")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_size})")
        step = micro_batch_size * dp_size
        if micro_batch_size <= 0 or consumed_samples < 0 or consumed_samples % step:
            raise ValueError(f"consumed_samples {consumed_samples} must be a non-negative multiple of "
                             f"micro_batch_size x dp_size = {step}")
        self.num_packs, self.mbs, self.rank, self.dp = num_packs, micro_batch_size, dp_rank, dp_size
        self.seed, self.consumed, self.total, self.shuffle = seed, consumed_samples, total_samples, shuffle
        self._epoch, self._order = -1, None

    def _pack_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_packs)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_packs)
        return int(self._order[offset])

    def __iter__(self) -> Iterator[list[int]]:
        step = self.mbs * self.dp
        position = self.consumed
        while self.total is None or position + step <= self.total:
            first = position + self.rank * self.mbs
            yield [self._pack_at(p) for p in range(first, first + self.mbs)]
            position += step

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("an endless sampler has no length (pass total_samples)")
        return max(0, (self.total - self.consumed) // (self.mbs * self.dp))
