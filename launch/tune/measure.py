"""Measure a real training step on this machine, to check the cost model against it.

Builds the family's model in one process (TP = PP = CP = 1) under Megatron DDP with Megatron's Adam,
feeds it a micro-batch laid out like a :class:`~launch.tune.workload.Row` (packed samples, page
images, answer tokens at the end of each sample), and records what backward keeps (every tensor
autograd saves, by storage), the peak memory of forward + backward above what existed before it
(:class:`AllocationTracker`), and the time of whole steps.
"""

from __future__ import annotations

import statistics
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from launch.tune.workload import Row
from megatron_vlm.models.hf_config import VLArch
from megatron_vlm.models.vlm import VisionLanguageModel


@dataclass(frozen=True)
class StepMeasurement:
    saved: int           # bytes of the tensors autograd keeps for backward (parameters and inputs excluded)
    peak: int            # peak bytes allocated during forward + backward above what existed before
    seconds: float       # median CPU time of a training step (forward, backward, gradient sync, Adam)
    step_times: list[float]


def row_batch(row: Row, arch: VLArch, *, seed: int = 0) -> dict:
    """A micro-batch of one row shaped like ``row``: each sample is text, its share of the images
    (``<|vision_start|>``, the image pads, ``<|vision_end|>``) and text, with the sample's last
    ``answer_tokens / samples`` tokens under the loss mask; the last segment is padding if the row has one
    more segment than images can be spread over. Keys are the model's (``docs/model.md``)."""
    g = np.random.default_rng(seed)
    vision_end = arch.vision_end_token_id
    samples = list(row.segments)
    per_sample = np.array_split(np.arange(len(row.image_grids)), len(samples))
    ids, loss_mask = [], []
    answers = np.array_split(np.arange(row.answer_tokens), len(samples))
    for n, images, answer in zip(samples, per_sample, answers):
        body = []
        for i in images:
            t, h, w = row.image_grids[i]
            body += [arch.vision_start_token_id] + [arch.image_token_id] * (t * h * w // row.merge_size ** 2) + [vision_end]
        text = n - len(body)
        if text < 0:
            raise ValueError(f"a sample of {n} tokens cannot hold {len(images)} of the row's images")
        head = text // 2
        sample = list(g.integers(0, 1000, head)) + body + list(g.integers(0, 1000, text - head))
        ids += sample
        mask = np.zeros(n, dtype=np.float32)
        mask[n - len(answer):] = 1
        loss_mask.append(mask)
    grids = torch.tensor(row.image_grids, dtype=torch.long).reshape(-1, 3)
    batch = {
        "input_ids": torch.tensor(ids)[None],
        "labels": torch.tensor(g.integers(0, 1000, len(ids)))[None],
        "loss_mask": torch.from_numpy(np.concatenate(loss_mask))[None],
        "cu_seqlens": torch.tensor(np.concatenate([[0], np.cumsum(samples)])),
    }
    if len(grids):
        batch["image_grid_thw"] = grids
        batch["pixel_values"] = torch.from_numpy(g.standard_normal((int(grids.prod(1).sum()), arch.family.geometry.patch_dim),
                                                                   dtype=np.float32))
    return batch


class AllocationTracker(TorchDispatchMode):
    """Peak bytes of the storages that operators create while it is active (freed when their last
    reference dies), not counting storages that existed before (``existing``: data pointers).

    Like the allocator's peak on a GPU (``torch.cuda.max_memory_allocated`` after a reset), on any
    device. (torch's ``MemTracker`` counts Megatron DDP's preallocated gradient buffer as new
    memory when backward adds into it; this does not.)
    """

    def __init__(self, existing: set[int]):
        super().__init__()
        self.existing, self.live, self.current, self.peak = existing, {}, 0, 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.existing and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def _storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def saved_storages(forward, excluded: set[int] = frozenset()) -> dict:
    """Run ``forward()``; the storages autograd saved for backward, not those whose data pointers are in
    ``excluded``. Read their sizes after forward: an output that activation recomputation discards has size 0
    by then (and its memory may hold a later tensor: storages are told apart by identity, not address)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() and storage.data_ptr() not in excluded:
            storages.setdefault(storage._cdata, storage)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return storages


def measure_step(model: VisionLanguageModel, batch: dict, *, repeats: int = 3) -> StepMeasurement:
    """Saved activations, peak memory and step time of ``model`` (TP = PP = CP = 1) on ``batch``."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    batch = dict(batch)
    batch["position_ids"] = model.position_ids(batch["input_ids"], batch.get("image_grid_thw"), batch["cu_seqlens"])
    ddp = DistributedDataParallel(model.language_model.config, DistributedDataParallelConfig(), model)
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-5, bf16=False, fp16=False), [ddp])

    def zero_grads():
        ddp.zero_grad_buffer()
        optimizer.zero_grad()  # drops the .grad views of the buffer that the optimizer step attached

    def forward_backward():
        loss = ddp(**batch)
        (loss * batch["loss_mask"]).sum().backward()

    def step():
        zero_grads()
        forward_backward()
        ddp.finish_grad_sync()
        optimizer.step()

    step()  # warm-up; creates the optimizer state
    excluded = _storages(model.parameters()) | _storages(v for v in batch.values() if torch.is_tensor(v))
    kept = saved_storages(lambda: ddp(**batch), excluded)
    saved = sum(s.nbytes() for s in kept.values())  # after forward: outputs recomputation discarded count 0
    del kept
    zero_grads()
    tracker = AllocationTracker(excluded | _storages(b.grad_data for b in ddp.buffers))
    with tracker:
        forward_backward()
    times = []
    for _ in range(repeats):
        start = time.process_time()  # CPU seconds: other processes on the machine do not inflate them
        step()
        times.append(time.process_time() - start)
    return StepMeasurement(saved=saved, peak=tracker.peak,
                           seconds=statistics.median(times) if times else float("nan"), step_times=times)
