"""3-D mRoPE position ids of Qwen2.5-VL (``get_rope_index`` in transformers), per packed sample.

Text tokens advance all three axes (temporal, height, width) by one. A still image of LLM grid
``(1, H, W)`` (``H = grid_h / 2``, ``W = grid_w / 2``) starting at position ``p`` gets
temporal ``p``, height ``p + row`` and width ``p + col``, and the text after it continues at
``p + max(H, W)``, not ``p + H * W``: a 50-page document of ~2,500 tokens per page spans only a
few thousand positions. Each contiguous run of ``<|image_pad|>`` tokens is one image, matched in
order with ``image_grid_thw``. In a packed sequence the positions restart at 0 for every sample.
"""

from __future__ import annotations

import numpy as np

IMAGE_TOKEN_ID = 151655


def _image_runs(is_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the contiguous runs of True in ``is_image``."""
    padded = np.concatenate(([False], is_image, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return edges[0::2], edges[1::2]


def mrope_position_ids(input_ids: np.ndarray, image_grid_thw: np.ndarray, *,
                       image_token_id: int = IMAGE_TOKEN_ID, spatial_merge_size: int = 2) -> np.ndarray:
    """Position ids ``int64 [3, s]`` of ONE sample; ``image_grid_thw`` ``[n_images, 3]`` in order."""
    input_ids = np.asarray(input_ids)
    grids = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    starts, ends = _image_runs(input_ids == image_token_id)
    if len(starts) != len(grids):
        raise ValueError(f"the sample has {len(starts)} image-token runs but {len(grids)} image grids")
    out = np.empty((3, input_ids.shape[0]), dtype=np.int64)
    pos = 0  # next position id
    cursor = 0  # next token index
    for (start, end), (t, gh, gw) in zip(zip(starts, ends), grids):
        h, w = gh // spatial_merge_size, gw // spatial_merge_size
        if end - start != t * h * w:
            raise ValueError(f"image at token {start} has {end - start} tokens but its grid "
                             f"{(t, gh, gw)} needs {t * h * w}")
        out[:, cursor:start] = np.arange(pos, pos + start - cursor)
        pos += start - cursor
        out[0, start:end] = np.repeat(np.arange(t) + pos, h * w)
        out[1, start:end] = np.tile(np.repeat(np.arange(h) + pos, w), t)
        out[2, start:end] = np.tile(np.arange(w) + pos, t * h)
        pos += max(h, w)
        cursor = end
    out[:, cursor:] = np.arange(pos, pos + input_ids.shape[0] - cursor)
    return out


def packed_mrope_position_ids(input_ids: np.ndarray, image_grid_thw: np.ndarray, cu_seqlens: np.ndarray, *,
                              image_token_id: int = IMAGE_TOKEN_ID, spatial_merge_size: int = 2) -> np.ndarray:
    """Position ids ``int64 [3, s]`` of a packed row; they restart at every boundary in ``cu_seqlens``.

    ``cu_seqlens`` is ``[0, len_0, len_0 + len_1, ...]``; tokens past its last entry (padding)
    continue as text of a final pseudo-sample. ``image_grid_thw`` lists the row's images in order.
    """
    input_ids = np.asarray(input_ids)
    grids = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    bounds = [int(b) for b in cu_seqlens]
    if bounds[-1] < input_ids.shape[0]:
        bounds.append(input_ids.shape[0])
    out = np.empty((3, input_ids.shape[0]), dtype=np.int64)
    used = 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        n_images = len(_image_runs(input_ids[lo:hi] == image_token_id)[0])
        out[:, lo:hi] = mrope_position_ids(input_ids[lo:hi], grids[used:used + n_images],
                                           image_token_id=image_token_id,
                                           spatial_merge_size=spatial_merge_size)
        used += n_images
    if used != len(grids):
        raise ValueError(f"the row has {used} images but {len(grids)} image grids")
    return out
