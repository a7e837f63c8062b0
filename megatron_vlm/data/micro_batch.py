"""A model-ready micro-batch: the token-level collation (``megatron_vlm.data.collate``) plus the pixel values,
patched with the family's image geometry.

``pixel_values [patches, geometry.patch_dim]`` float32 of the decoded images (those whose ``pages``
entry is not ``None``: one contiguous range, see ``megatron_vlm.data.image_share``) and
``pixel_range [2]``, that ``[first, last)`` image range. In a loader worker the pixel values are
allocated in shared memory (as torch's default collation does), so handing them to the trainer
copies nothing: at 128K tokens they are ~2.4 GB, written once.
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_vlm.data.collate import collate_packs
from megatron_vlm.models.geometry import ImageGeometry


def pixel_values(pages: list, grids: np.ndarray, geometry: ImageGeometry) -> torch.Tensor:
    """The given pages patched straight into one ``[patches, patch_dim]`` float32 tensor."""
    sizes = grids.prod(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n, width = int(offsets[-1]), geometry.patch_dim
    if torch.utils.data.get_worker_info() is None:
        out = torch.empty((n, width), dtype=torch.float32)
    else:
        storage = torch.UntypedStorage._new_shared(n * width * 4)
        out = torch.empty(0, dtype=torch.float32).set_(storage, 0, (n, width))
    view = out.numpy()
    done: dict[int, int] = {}  # id(page array) -> its first slice: a repeated page is copied, not redone
    for k, page in enumerate(pages):
        lo, hi = offsets[k], offsets[k + 1]
        if id(page) in done:
            j = done[id(page)]
            view[lo:hi] = view[offsets[j]:offsets[j + 1]]
        else:
            geometry.image_to_patches(page, out=view[lo:hi])
            done[id(page)] = k
    return out


def micro_batch(items: list[dict], geometry: ImageGeometry, **collate_options) -> dict:
    """``collate_packs`` of the items' tokens (``collate_options``: its padding / length), and, when the items
    carry ``pages``, their pixel values."""
    pages = [page for it in items for page in it["pages"]] if all("pages" in it for it in items) else None
    batch = collate_packs([{k: v for k, v in it.items() if k != "pages"} for it in items], **collate_options)
    if pages is not None:
        decoded = [k for k, page in enumerate(pages) if page is not None]
        first, last = (decoded[0], decoded[-1] + 1) if decoded else (0, 0)
        if decoded != list(range(first, last)):
            raise ValueError("the decoded images of a micro-batch must be one contiguous range")
        batch["pixel_values"] = pixel_values(pages[first:last], batch["image_grid_thw"].numpy()[first:last], geometry)
        batch["pixel_range"] = torch.tensor([first, last])
    return batch
