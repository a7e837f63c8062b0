"""Micro-batch collation: packed items -> one model-ready stream (THD, Megatron's packed-sequence conventions).

The rows of a micro-batch are concatenated into ONE stream ``[1, T]`` of packed samples, so a
micro-batch of several rows carries no padding between them. Each sample is padded at its end to a
multiple of ``padding.sample`` (``2 * cp``: context parallelism splits every sample into ``2 * cp``
chunks) and the stream to a multiple of ``padding.stream`` (the extra tokens join the last sample's
padding), or to a fixed ``length`` (the interleaved pipeline schedule needs one shape):

- ``input_ids`` ``[1, T]`` int64 (padding: ``<|endoftext|>``);
- ``labels`` ``[1, T]``: the next token of the same sample (``<|endoftext|>`` at each sample's last
  token and in padding); ``loss_mask`` ``[1, T]`` float32: 1 where ``labels`` is a target (answer
  tokens and the closing ``<|im_end|>``);
- ``position_ids`` ``[3, 1, T]``: Qwen2.5-VL mRoPE positions restarting at every sample (a sample's
  padding continues it as text);
- ``cu_seqlens`` ``[n + 1]`` int32: cumulative real sample lengths; ``cu_seqlens_padded`` ``[n + 1]``
  int32: where each (padded) sample starts in the stream (Transformer Engine's THD pair);
- ``image_grid_thw`` ``[images, 3]``, images in stream order (the pixel values, patched with a family's
  geometry, are added by ``megatron_vlm.data.micro_batch``);
- ``real_tokens``: the samples' tokens (the rest of ``T`` is padding).
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_vlm.formats.dataset import PAD_ID
from megatron_vlm.models.positions import packed_mrope_position_ids
from megatron_vlm.parallel import NO_PADDING, TokenPadding


def collate_packs(items: list[dict], padding: TokenPadding = NO_PADDING, length: int | None = None,
                  pad_id: int = PAD_ID) -> dict:
    """The items of ``BuiltDataset`` as one stream (see the module docstring); ``length``: pad it to exactly that."""
    lengths = np.concatenate([np.diff(it["cu_seqlens"]) for it in items]).astype(np.int64)
    padded = -(-lengths // padding.sample) * padding.sample
    starts = np.concatenate([[0], np.cumsum(padded)])
    total = int(starts[-1])
    t = -(-total // padding.stream) * padding.stream if length is None else length
    if t < total or t % padding.stream:
        raise ValueError(f"a micro-batch of {total} tokens (samples padded to multiples of {padding.sample}) does not "
                         f"fit a stream of {t} tokens that is a multiple of {padding.stream}")
    padded[-1] += t - total
    starts[-1] = t
    input_ids = np.full(t, pad_id, dtype=np.int64)
    labels = np.full(t, pad_id, dtype=np.int64)
    loss_mask = np.zeros(t, dtype=np.float32)
    k = 0
    for it in items:
        ids, targets, bounds = it["input_ids"], it["targets"], it["cu_seqlens"]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            at = starts[k]
            input_ids[at:at + hi - lo] = ids[lo:hi]
            labels[at:at + hi - lo - 1] = ids[lo + 1:hi]  # the sample's last token predicts nothing
            loss_mask[at:at + hi - lo - 1] = targets[lo + 1:hi]
            k += 1
    grids = np.concatenate([it["image_grid_thw"] for it in items]).reshape(-1, 3)
    batch = {
        "input_ids": torch.from_numpy(input_ids)[None],
        "labels": torch.from_numpy(labels)[None],
        "loss_mask": torch.from_numpy(loss_mask)[None],
        "position_ids": torch.from_numpy(packed_mrope_position_ids(input_ids, grids, starts))[:, None],
        "cu_seqlens": torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
        "cu_seqlens_padded": torch.from_numpy(starts.astype(np.int32)),
        "image_grid_thw": torch.from_numpy(grids),
        "real_tokens": torch.tensor(int(lengths.sum())),
    }
    return batch
