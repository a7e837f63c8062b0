"""The global stream of packs: position -> (dataset, pack), datasets blended by weight, seeded epochs.

Several built datasets are interleaved with megatron-core's own blending (each position goes to the
dataset furthest below its weight's share so far: ``build_blending_indices``); within a dataset, epoch
``e`` visits every pack once in the order ``default_rng([seed, d, e]).permutation(num_packs)`` (file
order with ``shuffle=False``). The same positions give the same packs on any number of ranks.
"""

from __future__ import annotations

import numpy as np


class PackStream:
    """``stream(position) -> (dataset_index, pack_index)``; ``total`` positions at most with several datasets."""

    def __init__(self, num_packs: list[int], weights: list[float] | None = None, *, seed: int = 1234,
                 shuffle: bool = True, total: int | None = None):
        if not num_packs or min(num_packs) <= 0:
            raise ValueError(f"every dataset needs packed sequences, got counts {num_packs}")
        weights = [1.0] * len(num_packs) if weights is None else [float(w) for w in weights]
        if len(weights) != len(num_packs) or min(weights) <= 0:
            raise ValueError(f"need one positive weight per dataset, got {weights} for {len(num_packs)}")
        self.num_packs, self.seed, self.shuffle = list(num_packs), seed, shuffle
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self._dataset = self._sample = None
        if len(num_packs) > 1:
            if total is None:
                raise ValueError("blending several datasets needs the stream's total length")
            from megatron.core.datasets import helpers

            share = np.asarray(weights, dtype=np.float64) / sum(weights)
            self._dataset = np.zeros(total, dtype=np.int16)
            self._sample = np.zeros(total, dtype=np.int64)
            helpers.build_blending_indices(self._dataset, self._sample, share, len(num_packs), total, False)

    def __call__(self, position: int) -> tuple[int, int]:
        if self._dataset is None:
            d, k = 0, position
        else:
            d, k = int(self._dataset[position]), int(self._sample[position])
        epoch, offset = divmod(k, self.num_packs[d])
        if not self.shuffle:
            return d, offset
        key = (d, epoch)
        if key not in self._orders:
            if len(self._orders) > 8:
                self._orders.clear()
            self._orders[key] = np.random.default_rng([self.seed, d, epoch]).permutation(self.num_packs[d])
        return d, int(self._orders[key][offset])
