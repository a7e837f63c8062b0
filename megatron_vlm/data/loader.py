"""``build_data_loader``: a built dataset -> an iterator of model-ready micro-batches for one DP rank."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from megatron_vlm.data.collate import collate_packs
from megatron_vlm.data.dataset import BuiltDataset
from megatron_vlm.data.sampler import PackBatchSampler


def build_data_loader(prefix: str | Path, micro_batch_size: int = 1, *, seq_length: int | None = None,
                      dp_rank: int = 0, dp_size: int = 1, seed: int = 1234, consumed_samples: int = 0,
                      total_samples: int | None = None, shuffle: bool = True, num_workers: int = 2,
                      prefetch_factor: int = 2, pool=None, pool_dir: str | Path | None = None,
                      ) -> torch.utils.data.DataLoader:
    """Micro-batches (see ``megatron_vlm.data.collate``) of this rank, in the seeded order, from
    ``consumed_samples`` on; ``num_workers`` processes decode pages and compute positions.

    ``seq_length`` pads every row to a fixed length (default: the dataset's ``max_seq_len``).
    """
    dataset = BuiltDataset(prefix, pool=pool, pool_dir=pool_dir)
    seq_length = seq_length or dataset.meta["config"]["max_seq_len"]
    sampler = PackBatchSampler(len(dataset), micro_batch_size, dp_rank=dp_rank, dp_size=dp_size, seed=seed,
                               consumed_samples=consumed_samples, total_samples=total_samples, shuffle=shuffle)
    workers = dict(num_workers=num_workers)
    if num_workers > 0:
        workers.update(prefetch_factor=prefetch_factor, persistent_workers=True)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **workers,
                                       collate_fn=functools.partial(collate_packs, seq_length=seq_length))
