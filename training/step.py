"""One training step on Megatron-Core's pipeline schedules (and the forward-only pass of validation).

``forward_step`` follows Megatron-LM's contract: it returns the model's per-token loss and a
``loss_func`` giving ``(loss_sum, answer_tokens, {"lm loss": [sum, tokens]})``; with
``calculate_per_token_loss`` the schedule and ``finalize_model_grads`` divide the gradients by the
answer tokens of the whole global batch (all micro-batches, data- and context-parallel ranks), so
the loss is the mean over answer tokens of the global batch, not a mean of micro-batch means.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_vlm.data.image_share import ImageShare, gather_pixels
from megatron_vlm.flops import model_flops
from megatron_vlm.models.context_parallel import cp_split
from megatron_vlm.models.hf_config import VLArch
from megatron_vlm.runtime import device

_MODEL_INPUTS = ("input_ids", "position_ids", "labels", "loss_mask")


def prepare_batch(batch: dict, share: ImageShare, pixel_dtype: torch.dtype = torch.float32) -> dict:
    """A loader micro-batch on this rank's device, with the pixels of this CP rank's images gathered
    from its TP ranks (first stage), or no pixels at all (a text-only micro-batch, later stages)."""
    dev = device()
    out = {k: batch[k].to(dev, non_blocking=True) for k in _MODEL_INPUTS}
    out["cu_seqlens"], out["cu_seqlens_padded"] = batch["cu_seqlens"], batch["cu_seqlens_padded"]  # stay on the host
    cp = ps.get_context_parallel_world_size()
    split = cp_split(batch["cu_seqlens_padded"], batch["input_ids"].shape[1], cp, ps.get_context_parallel_rank())
    out["local_loss_mask"] = out["loss_mask"] if split is None else split.select(out["loss_mask"], 1)
    grids = batch["image_grid_thw"]
    out["image_grid_thw"] = grids if len(grids) else None
    out["pixel_values"] = None
    if share.decode and len(grids):
        patches = grids.prod(1).tolist()
        pixels = batch["pixel_values"].to(dev, dtype=pixel_dtype, non_blocking=True)  # the patch embedding's dtype
        out["pixel_values"] = gather_pixels(pixels, patches, share, ps.get_tensor_model_parallel_group())
    out["real_tokens"] = int(batch["real_tokens"])
    out["computed_tokens"] = batch["input_ids"].numel()
    out["flop_shapes"] = (torch.diff(batch["cu_seqlens"]).tolist(), grids.tolist(), int(batch["loss_mask"].sum()))
    return out


def loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
    """Megatron's per-token-loss contract: the sum over this rank's answer tokens and their count.

    ``output`` is the per-token loss ``[b, s]``, or ``[b, s, 2]`` (loss, argmax is right) when scoring;
    the reported ``"lm loss"`` is ``[loss sum, answer tokens, right tokens]`` of this rank and, when
    scoring, ``"rows"`` the same per row of the micro-batch summed over the context-parallel ranks.
    """
    mask = loss_mask.float()
    scored = output.dim() == 3
    per_token = output[..., 0] if scored else output
    total = (per_token.float() * mask).sum()
    tokens = mask.sum().to(torch.int)
    right = (output[..., 1].float() * mask).sum() if scored else torch.zeros_like(total)
    reported = {"lm loss": torch.stack([total.detach(), tokens.detach().float(), right.detach()])}
    if scored:
        rows = torch.stack([(per_token.float() * mask).sum(1), mask.sum(1), (output[..., 1].float() * mask).sum(1)], 1)
        if ps.get_context_parallel_world_size() > 1:
            torch.distributed.all_reduce(rows, group=ps.get_context_parallel_group())
        reported["rows"] = rows.detach()
    return total, tokens, reported


def forward_step(data_iterator: Iterator[dict], model, score: bool = False):
    """One micro-batch through this rank's model chunk (the schedule calls it per micro-batch)."""
    batch = next(data_iterator)
    output = model(batch["input_ids"], position_ids=batch["position_ids"], pixel_values=batch["pixel_values"],
                   image_grid_thw=batch["image_grid_thw"], cu_seqlens=batch["cu_seqlens"],
                   cu_seqlens_padded=batch["cu_seqlens_padded"], labels=batch["labels"], loss_mask=batch["loss_mask"],
                   score=score)
    return output, partial(loss_func, batch["local_loss_mask"])


@dataclass
class StepResult:
    """What one global batch did (identical on every rank)."""

    loss: float
    answer_tokens: int
    accuracy: float  # share of answer tokens that are the argmax (scoring passes only; else 0)
    real_tokens: int  # tokens of the packs, all data-parallel ranks
    computed_tokens: int  # tokens the model ran on (padding included)
    data_wait: float  # seconds this rank waited for its loader
    model_flops: float = 0.0  # forward + backward model FLOPs, all data-parallel ranks (megatron_vlm.flops)


class _MicroBatches:
    """The micro-batches of one global batch, read from the loader when the schedule first asks for
    one (and timed), shared by this rank's model chunks (each chunk walks all of them), dropped once
    every chunk has had it."""

    def __init__(self, loader_iter: Iterator[dict], count: int, share: ImageShare, chunks: int, dtype):
        self.loader_iter, self.count, self.share, self.chunks, self.dtype = loader_iter, count, share, chunks, dtype
        self.loaded: dict[int, dict] = {}
        self.uses: dict[int, int] = {}
        self.wait = 0.0
        self.real_tokens = self.computed_tokens = 0
        self.shapes = []  # (sample lengths, image grids, answer tokens) of each micro-batch

    def _get(self, k: int) -> dict:
        if k not in self.loaded:
            start = time.perf_counter()
            batch = prepare_batch(next(self.loader_iter), self.share, self.dtype)
            self.wait += time.perf_counter() - start
            self.real_tokens += batch["real_tokens"]
            self.computed_tokens += batch["computed_tokens"]
            self.shapes.append(batch["flop_shapes"])
            self.loaded[k], self.uses[k] = batch, 0
        batch = self.loaded[k]
        self.uses[k] += 1
        if self.uses[k] == self.chunks:
            del self.loaded[k]
        return batch

    def iterator(self) -> Iterator[dict]:
        return (self._get(k) for k in range(self.count))


def _reduce_loss(losses: list[dict]) -> tuple[float, int, float]:
    """The global batch's mean loss over answer tokens, its answer tokens and their accuracy, on every rank."""
    stats = torch.zeros(3, dtype=torch.float64, device=device())
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        for item in losses:
            stats += item["lm loss"].to(stats)
        torch.distributed.all_reduce(stats, group=ps.get_data_parallel_group(with_context_parallel=True))
    torch.distributed.all_reduce(stats, group=ps.get_pipeline_model_parallel_group())  # only the last stage is nonzero
    total, tokens, right = stats.tolist()
    return (total / tokens if tokens else float("nan")), int(tokens), (right / tokens if tokens else 0.0)


def _sum_over_dp(*values: float) -> list[float]:
    """Each value summed over the data-parallel ranks (one all-reduce)."""
    t = torch.tensor(values, dtype=torch.float64, device=device())
    torch.distributed.all_reduce(t, group=ps.get_data_parallel_group())
    return t.tolist()


def run_schedule(chunks, loader_iter, num_microbatches: int, share: ImageShare, stream_length: int,
                 forward_only: bool, score: bool = False,
                 arch: VLArch | None = None) -> tuple[StepResult, list]:
    """Forward (and backward) of one global batch through Megatron-Core's schedule; no optimizer step.

    Each micro-batch is one packed stream ``[1, T]`` (``megatron_vlm.data.collate``); ``stream_length``:
    its length when fixed (the interleaved schedule's tensor shape), else the longest it can be.

    ``arch``: count the batch's model FLOPs (``StepResult.model_flops``) for that architecture.

    ``score`` (forward only): also the argmax accuracy, and per-row results in the last stage's
    ``losses[k]["rows"]`` (``[loss sum, answer tokens, right tokens]`` of each row of micro-batch ``k``).
    """
    dtype = getattr(chunks[0], "module", chunks[0]).model_config.language.params_dtype
    batches = _MicroBatches(loader_iter, num_microbatches, share, len(chunks), dtype)
    iters = [batches.iterator() for _ in chunks]
    losses = get_forward_backward_func()(
        forward_step_func=partial(forward_step, score=score), data_iterator=iters if len(chunks) > 1 else iters[0],
        model=chunks if len(chunks) > 1 else chunks[0], num_microbatches=num_microbatches,
        seq_length=stream_length, micro_batch_size=1, forward_only=forward_only)
    loss, tokens, accuracy = _reduce_loss(losses)
    flops = sum(model_flops(arch, *shapes).total for shapes in batches.shapes) if arch is not None else 0.0
    real, computed, flops = _sum_over_dp(batches.real_tokens, batches.computed_tokens, flops)
    result = StepResult(loss=loss, answer_tokens=tokens, accuracy=accuracy, real_tokens=int(real),
                        computed_tokens=int(computed), data_wait=batches.wait, model_flops=flops)
    return result, losses
