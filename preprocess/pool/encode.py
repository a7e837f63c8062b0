"""Page image encodings, chosen by measurement (docs/benchmarks.md, "Document pool").

- ``auto`` (default): a page whose pixels are all gray (R = G = B, most text pages) is stored as a
  lossless 8-bit grayscale PNG; a colour page as a 4:4:4 JPEG (``jpeg_quality`` 92 keeps every
  colour page of the test corpus above 40 dB PSNR; ``min_psnr`` can enforce it per page, falling
  back to lossless PNG, at the cost of a decode per colour page);
- ``png``: lossless PNG for every page (grayscale when gray, else RGB);
- ``jpeg``: 4:4:4 JPEG for every page.

PNGs are written here rather than by Pillow: with no scanline filter and zlib level 1 they are
2.4x faster to write than Pillow's PNG at level 1 and no larger on rendered text pages (Pillow
offers no filter choice). Any PNG decoder reads them.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_ZLIB_LEVEL = 1


def is_gray(rgb: np.ndarray) -> bool:
    """True when every pixel has R = G = B (then a grayscale image is lossless)."""
    sample = rgb[::16]  # most colour pages show it in a sixteenth of the rows: answer fast
    if not (np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(sample[..., 0], sample[..., 2])):
        return False
    r = rgb[..., 0]
    return bool(np.array_equal(r, rgb[..., 1]) and np.array_equal(r, rgb[..., 2]))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of an ``[h, w]`` (grayscale) or ``[h, w, 3]`` (RGB) uint8 array, filter type 0."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    color_type = {1: 0, 3: 2}[channels]
    rows = np.empty((h, 1 + w * channels), dtype=np.uint8)
    rows[:, 0] = 0  # filter type 0 (None) on every scanline
    rows[:, 1:] = pixels.reshape(h, w * channels)
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.data, PNG_ZLIB_LEVEL)) + _png_chunk(b"IEND", b""))


def jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    """A baseline JPEG without chroma subsampling (4:4:4: coloured text keeps sharp edges)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) between two uint8 images of the same shape."""
    diff = (np.maximum(a, b) - np.minimum(a, b)).reshape(-1).astype(np.float32)
    mse = float(np.dot(diff, diff)) / diff.size
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def encode_page(rgb: np.ndarray, encoding: str, jpeg_quality: int, min_psnr: float = 0.0) -> tuple[bytes, str]:
    """Encoded bytes of an RGB page and their format (``png`` or ``jpeg``)."""
    if encoding != "jpeg" and is_gray(rgb):
        return png_bytes(np.ascontiguousarray(rgb[..., 0])), "png"
    if encoding == "png":
        return png_bytes(rgb), "png"
    data = jpeg_bytes(rgb, jpeg_quality)
    if encoding == "auto" and min_psnr > 0:
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        if psnr(decoded, rgb) < min_psnr:
            return png_bytes(rgb), "png"
    return data, "jpeg"
