"""Page image encodings, chosen by measurement (docs/benchmarks.md, "Document pool").

- ``auto`` (default): lossless PNG (8-bit grayscale when every pixel has R = G = B, as on most text
  pages, else RGB); a photographic page, whose PNG would exceed ``PHOTO_BYTES_PER_PIXEL``, is
  stored as a 4:4:4 JPEG instead when that is much smaller;
- ``png``: lossless PNG for every page;
- ``jpeg``: 4:4:4 JPEG for every page.

PNGs are written here rather than by Pillow: no scanline filter and ISA-L's deflate (level 1),
which on rendered pages is 10x faster to write than Pillow's PNG at level 1 and about as small
(Pillow offers no filter or compressor choice). Any PNG decoder reads them.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
from PIL import Image

try:  # ISA-L's deflate: same format as zlib, 6x faster at level 1
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - isal is a dependency; plain zlib is the slow fallback
    _deflate = zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFLATE_LEVEL = 1
# Rendered text pages need ~0.1 byte/pixel as PNG; scans and photos over 0.25 try JPEG, which is
# kept if it is below 70% of the PNG.
PHOTO_BYTES_PER_PIXEL = 0.25
JPEG_GAIN = 0.7


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
            + _png_chunk(b"IDAT", _deflate.compress(rows.data, DEFLATE_LEVEL)) + _png_chunk(b"IEND", b""))


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


def _jpeg_ok(data: bytes, rgb: np.ndarray, min_psnr: float) -> bool:
    if min_psnr <= 0:
        return True
    return psnr(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rgb) >= min_psnr


def encode_page(rgb: np.ndarray, encoding: str, jpeg_quality: int, min_psnr: float = 0.0) -> tuple[bytes, str]:
    """Encoded bytes of an RGB page and their format (``png`` or ``jpeg``)."""
    if encoding == "jpeg":
        return jpeg_bytes(rgb, jpeg_quality), "jpeg"
    gray = is_gray(rgb)
    png = png_bytes(np.ascontiguousarray(rgb[..., 0]) if gray else rgb)
    if encoding == "png" or len(png) <= PHOTO_BYTES_PER_PIXEL * rgb.shape[0] * rgb.shape[1]:
        return png, "png"
    jpeg = jpeg_bytes(rgb, jpeg_quality)
    if len(jpeg) < JPEG_GAIN * len(png) and _jpeg_ok(jpeg, rgb, min_psnr):
        return jpeg, "jpeg"
    return png, "png"
