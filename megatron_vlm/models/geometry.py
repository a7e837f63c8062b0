"""Image geometry and pixel layout of a model family: smart_resize and the flattened patch layout.

An :class:`ImageGeometry` is what a family's image processor does (each family declares its own;
``megatron_vlm.models.registry``); it follows ``transformers``' Qwen2-VL image processor exactly
(tested against it):

- ``smart_resize``: sides rounded to multiples of ``factor`` (patch x merge: 28 for Qwen2.5-VL, 32
  for Qwen3-VL), scaled down (floor) above ``max_pixels``, up (ceil) below ``min_pixels``; aspect
  ratio > 200 is an error.
- ``image_to_patches``: rescale to [0, 1], normalize with the family's mean/std, and flatten to
  ``[grid_h * grid_w, 3 * 2 * patch * patch]`` with every 2x2 merge group contiguous and the still
  image repeated over the 2 temporal frames; ``image_grid_thw = (1, grid_h, grid_w)``.
- ``fit``: a page rendered for another geometry (a pool made for another family) resized to this one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MAX_ASPECT_RATIO = 200
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageGeometry:
    """How a family turns an image into vision patches and LLM tokens."""

    patch_size: int
    min_pixels: int  # the preprocessor's defaults (pool and eval options override them)
    max_pixels: int
    merge_size: int = 2
    temporal_patch_size: int = 2
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @property
    def factor(self) -> int:
        """Pixels per LLM token along each side (patch x merge)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Values per patch row of ``pixel_values``: 3 channels x frames x patch x patch."""
        return 3 * self.temporal_patch_size * self.patch_size ** 2

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageGeometry:
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    def same_patches(self, other: ImageGeometry) -> bool:
        """Whether both cut pages into the same grids (pixel normalization aside)."""
        return (self.patch_size, self.merge_size, self.temporal_patch_size) == \
            (other.patch_size, other.merge_size, other.temporal_patch_size)

    def smart_resize(self, height: int, width: int, min_pixels: int | None = None,
                     max_pixels: int | None = None) -> tuple[int, int]:
        """The (height, width) the family resizes an image to; ValueError if the aspect ratio > 200."""
        factor = self.factor
        min_pixels = self.min_pixels if min_pixels is None else min_pixels
        max_pixels = self.max_pixels if max_pixels is None else max_pixels
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

    def grid_thw(self, height: int, width: int) -> tuple[int, int, int]:
        """The vision grid (t, h/patch, w/patch) of an image already at a smart-resized size."""
        if height % self.factor or width % self.factor:
            raise ValueError(f"image size {height}x{width} is not a multiple of {self.factor}; smart_resize it first")
        return 1, height // self.patch_size, width // self.patch_size

    def llm_tokens(self, height: int, width: int) -> int:
        """``<|image_pad|>`` tokens an image of this (smart-resized) size takes in the LLM sequence."""
        _, gh, gw = self.grid_thw(height, width)
        return gh * gw // (self.merge_size * self.merge_size)

    def fit_size(self, height: int, width: int, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> tuple[int, int]:
        """The size a page stored at ``height x width`` pixels takes here: itself if it is already a
        multiple of this factor within the bounds, else its ``smart_resize``."""
        min_pixels = self.min_pixels if min_pixels is None else min_pixels
        max_pixels = self.max_pixels if max_pixels is None else max_pixels
        if not (height % self.factor or width % self.factor) and min_pixels <= height * width <= max_pixels:
            return height, width
        return self.smart_resize(height, width, min_pixels, max_pixels)

    def fit(self, pixels: np.ndarray, height: int, width: int) -> np.ndarray:
        """``HxWx3`` uint8 pixels resized (bicubic, as the image processors do) to ``height x width``."""
        if pixels.shape[:2] == (height, width):
            return pixels
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(pixels))
        return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))

    def _lut(self) -> np.ndarray:
        # Normalized value of every uint8 level per channel: one table lookup instead of float math per pixel.
        return ((np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
                 - np.asarray(self.mean, np.float32)[:, None]) / np.asarray(self.std, np.float32)[:, None])

    def image_to_patches(self, image, dtype=np.float32, out: np.ndarray | None = None,
                         ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Pixel values ``[grid_h * grid_w, patch_dim]`` and ``(1, grid_h, grid_w)`` of an RGB image.

        ``image`` is a PIL image or an ``HxWx3`` uint8 array whose sides are multiples of the factor
        (pages are stored or fitted at that size, so no resampling happens here). ``out``: a
        C-contiguous ``[grid_h * grid_w, patch_dim]`` array to write into (e.g. a slice of a
        micro-batch's ``pixel_values``), which saves a copy of the largest array a 128K-token batch holds.
        """
        pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {pixels.dtype} {pixels.shape}")
        height, width = pixels.shape[:2]
        t, gh, gw = self.grid_thw(height, width)
        m, p = self.merge_size, self.patch_size
        if out is None:
            out = np.empty((gh * gw, self.patch_dim), dtype=dtype)
        elif out.shape != (gh * gw, self.patch_dim) or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {(gh * gw, self.patch_dim)} array, got {out.shape}")
        lut = _LUTS.setdefault((self.mean, self.std), self._lut())
        # One row of 2x2 merge groups (m * p pixel rows) at a time, so the temporaries stay in cache:
        # reorder the uint8 pixels (a quarter of the bytes of floats) to (gw/m, m, m, C, p, p), i.e.
        # each merge group contiguous with channel-first patches, then normalize them through the
        # per-channel lookup table straight into both temporal frames of ``out``.
        rows = pixels.reshape(gh // m, m, p, gw // m, m, p, 3)
        frames = out.reshape(gh // m, (gw // m) * m * m, 3, self.temporal_patch_size, p * p)
        for row, dest in zip(rows, frames):
            ordered = np.ascontiguousarray(row.transpose(2, 0, 3, 5, 1, 4)).reshape(-1, 3, p * p)
            for c in range(3):
                values = lut[c][ordered[:, c]]
                for frame in range(self.temporal_patch_size):
                    dest[:, c, frame] = values
        return out, (t, gh, gw)


_LUTS: dict[tuple, np.ndarray] = {}
