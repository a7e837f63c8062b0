"""Micro-batch collation: packed items -> model-ready tensors (Megatron conventions).

Per row ``r`` of the micro-batch (one packed sequence, right-padded to ``seq_length``, or, without
it, to the longest row rounded up to ``pad_multiple``: rows train at their own length):

- ``input_ids`` ``[b, s]`` int64 (padding: ``<|endoftext|>``);
- ``labels`` ``[b, s]``: the next token of the same sample (``<|endoftext|>`` at each sample's last
  token and in padding); ``loss_mask`` ``[b, s]`` float32: 1 where ``labels`` is a target (answer
  tokens and the closing ``<|im_end|>``);
- ``position_ids`` ``[3, b, s]``: Qwen2.5-VL mRoPE positions restarting at every sample (padding
  continues as a last pseudo-sample);
- ``cu_seqlens`` ``[n + 1]`` int32: sample boundaries in the flattened ``b * s`` token stream (THD
  layout); padding at a row end is its own segment, so no attention crosses samples or rows;
- ``image_grid_thw`` ``[images, 3]``, images in row order; ``pixel_values`` ``[patches, 1176]`` of
  the decoded images (those whose ``pages`` entry is not ``None``: one contiguous range, see
  ``megatron_vlm.data.image_share``) and ``pixel_range`` ``[2]``, that ``[first, last)`` image range;
- ``real_tokens``: the tokens of the packs (the rest of ``b * s`` is padding); ``sample_lengths``
  ``[n]`` int64: the packed samples' lengths, rows in order, padding not included (model FLOPs).
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_vlm.data.positions import packed_mrope_position_ids
from megatron_vlm.data.vision import PATCH_DIM, image_to_patches
from megatron_vlm.formats.dataset import PAD_ID


def _pixel_values(pages: list, grids: np.ndarray) -> torch.Tensor:
    """The given pages patched straight into one ``[patches, 1176]`` float32 tensor.

    At 128K tokens this is ~2.4 GB, so it is written once: in a worker process it is allocated in
    shared memory (as torch's default collation does), so handing it to the trainer copies nothing.
    """
    sizes = grids.prod(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    if torch.utils.data.get_worker_info() is None:
        out = torch.empty((n, PATCH_DIM), dtype=torch.float32)
    else:
        storage = torch.UntypedStorage._new_shared(n * PATCH_DIM * 4)
        out = torch.empty(0, dtype=torch.float32).set_(storage, 0, (n, PATCH_DIM))
    view = out.numpy()
    done: dict[int, int] = {}  # id(page array) -> its first slice: a repeated page is copied, not redone
    for k, page in enumerate(pages):
        lo, hi = offsets[k], offsets[k + 1]
        if id(page) in done:
            j = done[id(page)]
            view[lo:hi] = view[offsets[j]:offsets[j + 1]]
        else:
            image_to_patches(page, out=view[lo:hi])
            done[id(page)] = k
    return out


def collate_packs(items: list[dict], seq_length: int | None = None, pad_id: int = PAD_ID,
                  pad_multiple: int = 1) -> dict:
    """Stack the items of ``BuiltDataset`` into one micro-batch (``seq_length=None``: the longest row,
    rounded up to ``pad_multiple``)."""
    longest = max(len(it["input_ids"]) for it in items)
    s = seq_length or -(-longest // pad_multiple) * pad_multiple
    b = len(items)
    input_ids = np.full((b, s), pad_id, dtype=np.int64)
    labels = np.full((b, s), pad_id, dtype=np.int64)
    loss_mask = np.zeros((b, s), dtype=np.float32)
    position_ids = np.empty((3, b, s), dtype=np.int64)
    cu = [0]
    for r, it in enumerate(items):
        ids, targets, bounds = it["input_ids"], it["targets"], it["cu_seqlens"]
        n = len(ids)
        if n > s:
            raise ValueError(f"a packed sequence of {n} tokens does not fit seq_length {s}")
        input_ids[r, :n] = ids
        same_sample = np.ones(n, dtype=bool)
        same_sample[bounds[1:] - 1] = False  # the last token of each sample predicts nothing
        nxt = np.flatnonzero(same_sample)
        labels[r, nxt] = ids[nxt + 1]
        loss_mask[r, nxt] = targets[nxt + 1]
        position_ids[:, r] = packed_mrope_position_ids(input_ids[r], it["image_grid_thw"], bounds)
        cu.extend(r * s + bounds[1:])
        if n < s:
            cu.append(r * s + s)
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(loss_mask),
        "position_ids": torch.from_numpy(position_ids),
        "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
        "image_grid_thw": torch.from_numpy(np.concatenate([it["image_grid_thw"] for it in items])),
        "real_tokens": torch.tensor(sum(len(it["input_ids"]) for it in items)),
        "sample_lengths": torch.from_numpy(np.concatenate([np.diff(it["cu_seqlens"]) for it in items]).astype(np.int64)),
    }
    if all("pages" in it for it in items):
        pages = [page for it in items for page in it["pages"]]
        decoded = [k for k, page in enumerate(pages) if page is not None]
        first, last = (decoded[0], decoded[-1] + 1) if decoded else (0, 0)
        if decoded != list(range(first, last)):
            raise ValueError("the decoded images of a micro-batch must be one contiguous range")
        batch["pixel_values"] = _pixel_values(pages[first:last], batch["image_grid_thw"].numpy()[first:last])
        batch["pixel_range"] = torch.tensor([first, last])
    return batch
