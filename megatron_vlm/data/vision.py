"""Qwen2.5-VL image geometry and pixel layout: smart_resize and the flattened patch layout.

These follow ``transformers``' Qwen2-VL image processor exactly (tested against it):

- ``smart_resize``: sides rounded to multiples of ``factor`` (28 = patch 14 x merge 2), scaled
  down (floor) above ``max_pixels``, up (ceil) below ``min_pixels``; aspect ratio > 200 is an error.
- ``image_to_patches``: rescale to [0, 1], normalize with the OpenAI CLIP mean/std, and flatten
  to ``[grid_h * grid_w, 3 * 2 * 14 * 14]`` with every 2x2 merge group contiguous and the still
  image repeated over the 2 temporal frames; ``image_grid_thw = (1, grid_h, grid_w)``.
"""

from __future__ import annotations

import math

import numpy as np

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: one LLM token per 28x28 pixels
PATCH_DIM = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1176
MAX_ASPECT_RATIO = 200
# The Qwen2.5-VL-7B preprocessor defaults.
MIN_PIXELS = 3136
MAX_PIXELS = 12845056
MAX_DPI = 1200  # a page rendered finer is only shrunk again to MAX_PIXELS (an A4 page at 1200 dpi: 140M pixels)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The (height, width) Qwen2.5-VL resizes an image to; ValueError if the aspect ratio > 200."""
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio:.1f}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def grid_thw(height: int, width: int) -> tuple[int, int, int]:
    """The vision grid (t, h/14, w/14) of an image already at a smart-resized size."""
    if height % FACTOR or width % FACTOR:
        raise ValueError(f"image size {height}x{width} is not a multiple of {FACTOR}; smart_resize it first")
    return 1, height // PATCH_SIZE, width // PATCH_SIZE


def llm_tokens(height: int, width: int) -> int:
    """``<|image_pad|>`` tokens an image of this (smart-resized) size takes in the LLM sequence."""
    _, gh, gw = grid_thw(height, width)
    return gh * gw // (MERGE_SIZE * MERGE_SIZE)


# Normalized value of every uint8 level per channel: one table lookup instead of float math per pixel.
_LUT = ((np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
         - np.asarray(CLIP_MEAN, np.float32)[:, None]) / np.asarray(CLIP_STD, np.float32)[:, None])


def image_to_patches(image, dtype=np.float32, out: np.ndarray | None = None,
                     ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Pixel values ``[grid_h * grid_w, 1176]`` and ``(1, grid_h, grid_w)`` of an RGB image.

    ``image`` is a PIL image or an ``HxWx3`` uint8 array whose sides are multiples of 28
    (the pool stores pages already smart-resized, so no resampling happens here). ``out``: a
    C-contiguous ``[grid_h * grid_w, 1176]`` array to write into (e.g. a slice of a micro-batch's
    ``pixel_values``), which saves a copy of the largest array a 128K-token batch holds.
    """
    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    t, gh, gw = grid_thw(height, width)
    m, p = MERGE_SIZE, PATCH_SIZE
    if out is None:
        out = np.empty((gh * gw, PATCH_DIM), dtype=dtype)
    elif out.shape != (gh * gw, PATCH_DIM) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {(gh * gw, PATCH_DIM)} array, got {out.shape}")
    # One row of 2x2 merge groups (28 pixel rows) at a time, so the temporaries stay in cache:
    # reorder the uint8 pixels (a quarter of the bytes of floats) to (gw/m, m, m, C, p, p), i.e.
    # each merge group contiguous with channel-first patches, then normalize them through the
    # per-channel lookup table straight into both temporal frames of ``out``.
    rows = pixels.reshape(gh // m, m, p, gw // m, m, p, 3)
    frames = out.reshape(gh // m, (gw // m) * m * m, 3, TEMPORAL_PATCH_SIZE, p * p)
    for row, dest in zip(rows, frames):
        ordered = np.ascontiguousarray(row.transpose(2, 0, 3, 5, 1, 4)).reshape(-1, 3, p * p)
        for c in range(3):
            values = _LUT[c][ordered[:, c]]
            for frame in range(TEMPORAL_PATCH_SIZE):
                dest[:, c, frame] = values
    return out, (t, gh, gw)
