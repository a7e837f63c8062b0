"""``build_data_loader``: built datasets -> an iterator of model-ready micro-batches for one rank.

Rows come from the global stream (``megatron_vlm.data.stream``: several datasets blended by weight),
this data-parallel rank's positions of it (``megatron_vlm.data.sampler``); each micro-batch is
collated at its own length with its pages patched at the datasets' family geometry
(``megatron_vlm.data.micro_batch``), and only this rank's share of its pages
is decoded (``megatron_vlm.data.image_share``), in ``num_workers`` processes.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Sequence
from pathlib import Path

import torch

from megatron_vlm.data.dataset import BuiltDataset
from megatron_vlm.data.image_share import ImageShare
from megatron_vlm.data.micro_batch import micro_batch
from megatron_vlm.data.sampler import PackBatchSampler
from megatron_vlm.data.stream import PackStream
from megatron_vlm.formats.dataset import DatasetFormatError
from megatron_vlm.parallel import NO_PADDING, TokenPadding


class MicroBatchItems(torch.utils.data.Dataset):
    """Stream positions -> the packs of one micro-batch, with this rank's share of their pages decoded."""

    def __init__(self, datasets: Sequence[BuiltDataset], stream: PackStream, share: ImageShare):
        self.datasets, self.stream, self.share = list(datasets), stream, share

    def __getitems__(self, positions: list[int]) -> list[dict]:
        packs = [self.stream(p) for p in positions]
        items = [self.datasets[d].item(k) for d, k in packs]
        patches = [int(g.prod()) for it in items for g in it["image_grid_thw"]]
        first, last = self.share.own_range(patches)
        offset = 0
        for (d, _), item in zip(packs, items):
            n = len(item["image_grid_thw"])
            item["pages"] = self.datasets[d].decode_pages(item, range(max(0, first - offset), min(n, last - offset)))
            offset += n
        return items

    def __getitem__(self, position: int) -> dict:
        return self.__getitems__([position])[0]


def _ignore_signals(names: tuple[str, ...], worker_id: int) -> None:
    """A worker's start: ignore ``names``. SLURM signals every process of a job step (``--signal``,
    ``scancel --signal``, preemption), loader workers included; a worker killed by the signal would make
    the training process fail ("DataLoader worker is killed by signal") instead of saving on it. The
    workers still stop when their iterator shuts them down (:func:`stop_workers`), or when their parent
    has died."""
    for name in names:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def stop_workers(iterator) -> None:
    """Shut the worker processes of a loader's iterator down now, not whenever it is garbage-collected.
    Workers that ignore SIGTERM (:func:`_ignore_signals`) must be stopped so: at interpreter exit,
    multiprocessing terminates the remaining workers with SIGTERM and then waits for them, forever."""
    shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's own (what its __del__ calls)
    if shutdown is not None:
        shutdown()


def build_data_loader(prefix: str | Path | Sequence[str | Path], micro_batch_size: int = 1, *,
                      weights: Sequence[float] | None = None, padding: TokenPadding = NO_PADDING,
                      length: int | None = None,
                      dp_rank: int = 0, dp_size: int = 1, seed: int = 1234, consumed_samples: int = 0,
                      total_samples: int | None = None, shuffle: bool = True, num_workers: int = 2,
                      prefetch_factor: int = 2, share: ImageShare | None = None, pool=None,
                      pool_dir: str | Path | None = None,
                      worker_ignored_signals: Sequence[str] = ()) -> torch.utils.data.DataLoader:
    """Micro-batches (see ``megatron_vlm.data.collate``) of this rank, in the seeded order, from
    ``consumed_samples`` on, up to ``total_samples`` rows of the global stream (``None``: endless).

    ``prefix``: one built dataset or several (blended by ``weights``). Each micro-batch is one stream of
    its rows' samples padded by ``padding`` (``ParallelLayout.token_padding``), or to exactly ``length``
    tokens (a fixed shape). ``worker_ignored_signals`` (e.g.
    ``["SIGTERM", "SIGUSR1"]``): signals the worker processes ignore, leaving them to the process that
    iterates (see :func:`_ignore_signals`; stop such workers with :func:`stop_workers`).
    """
    prefixes = [prefix] if isinstance(prefix, (str, Path)) else list(prefix)
    datasets = [BuiltDataset(p, pool=pool, pool_dir=pool_dir) for p in prefixes]
    families = {d.family for d in datasets}
    if len(families) > 1:
        raise DatasetFormatError(f"the datasets were built for different model families ({', '.join(sorted(families))}); "
                                 "rebuild them for the model's with 'longvlm build --family FAMILY'")
    stream = PackStream([len(d) for d in datasets], weights, seed=seed, shuffle=shuffle, total=total_samples)
    sampler = PackBatchSampler(micro_batch_size, dp_rank=dp_rank, dp_size=dp_size,
                               consumed_samples=consumed_samples, total_samples=total_samples)
    workers = dict(num_workers=num_workers)
    if num_workers > 0:
        workers.update(prefetch_factor=prefetch_factor,
                       worker_init_fn=functools.partial(_ignore_signals, tuple(worker_ignored_signals)))
    return torch.utils.data.DataLoader(MicroBatchItems(datasets, stream, share or ImageShare()), batch_sampler=sampler, **workers,
                                       collate_fn=functools.partial(micro_batch, geometry=datasets[0].geometry,
                                                                    padding=padding, length=length))
