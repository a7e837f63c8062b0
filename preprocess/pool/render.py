"""Page rendering and encoding: PDF page -> Qwen2.5-VL-sized image -> compact encoded bytes.

A page is rendered with PyMuPDF at ``dpi`` and resized to the Qwen2.5-VL grid with
``smart_resize`` (sides multiples of 28, within min/max pixels). Both happen in one step: the page
is rasterized directly at the target size (an anisotropic scale of at most half a 28-pixel cell),
which is sharper and faster than rendering and then resampling.

Encodings (chosen by measurement, see docs/benchmarks.md):
- ``auto``: a page whose pixels are all gray (R = G = B) is stored as a lossless 8-bit grayscale
  PNG; a colour page as a 4:4:4 JPEG, checked to be within ``min_psnr`` dB of the render (else
  stored as lossless RGB PNG);
- ``png``: lossless PNG, grayscale when the page is gray;
- ``jpeg``: 4:4:4 JPEG for every page.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pymupdf
from PIL import Image

from megatron_vlm.data.vision import FACTOR, PATCH_SIZE, smart_resize

# ISO 32000 (Annex C): a page side is at most 14,400 user units (200 inches); below 1 pt is absurd.
MIN_PAGE_POINTS = 1.0
MAX_PAGE_POINTS = 14400.0
PNG_LEVEL = 1  # zlib level: level 1 is ~3x faster than 6 for ~15% more bytes on text pages


class PageRejected(Exception):
    """A page that cannot be used; ``reason`` is a rejected.jsonl code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PageGeometry:
    render_width: int  # pixels at dpi (what a plain render at dpi gives)
    render_height: int
    width: int  # pixels after smart_resize
    height: int

    @property
    def grid(self) -> list[int]:
        return [self.height // PATCH_SIZE, self.width // PATCH_SIZE]

    @property
    def tokens(self) -> int:
        return self.height * self.width // (FACTOR * FACTOR)


def page_geometry(rect: pymupdf.Rect, dpi: int, min_pixels: int, max_pixels: int,
                  page_number: int) -> PageGeometry:
    """The render and Qwen2.5-VL sizes of a page; PageRejected for absurd sizes or aspect ratios."""
    w_pt, h_pt = rect.width, rect.height
    if not (MIN_PAGE_POINTS <= w_pt <= MAX_PAGE_POINTS and MIN_PAGE_POINTS <= h_pt <= MAX_PAGE_POINTS):
        raise PageRejected("page_size", f"page {page_number} is {w_pt:.1f} x {h_pt:.1f} pt "
                           f"(allowed {MIN_PAGE_POINTS:g}-{MAX_PAGE_POINTS:g} pt per side)")
    zoom = dpi / 72.0
    irect = (rect * pymupdf.Matrix(zoom, zoom)).irect  # the same rounding as get_pixmap(dpi=...)
    rw, rh = irect.width, irect.height
    try:
        h, w = smart_resize(rh, rw, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as err:
        raise PageRejected("aspect_ratio", f"page {page_number} ({rw}x{rh} px): {err}") from None
    return PageGeometry(rw, rh, w, h)


def render_page(page: pymupdf.Page, geo: PageGeometry) -> np.ndarray:
    """RGB uint8 array ``[height, width, 3]`` of the page rasterized at the target size."""
    rect = page.rect
    matrix = pymupdf.Matrix(geo.width / rect.width, geo.height / rect.height)
    pix = page.get_pixmap(matrix=matrix, colorspace=pymupdf.csRGB, alpha=False)
    arr = np.frombuffer(pix.samples_mv, dtype=np.uint8).reshape(pix.height, pix.width, pix.n).copy()
    if (pix.width, pix.height) != (geo.width, geo.height):  # MuPDF rounded a side differently
        img = Image.fromarray(arr).resize((geo.width, geo.height), Image.Resampling.BICUBIC)
        arr = np.asarray(img)
    return arr


def is_gray(rgb: np.ndarray) -> bool:
    """True when every pixel has R = G = B (then a grayscale image is lossless)."""
    r = rgb[..., 0]
    return bool(np.array_equal(r, rgb[..., 1]) and np.array_equal(r, rgb[..., 2]))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) between two uint8 images of the same shape."""
    diff = a.astype(np.int16) - b.astype(np.int16)
    flat = diff.reshape(-1).astype(np.int32)
    mse = float(np.dot(flat, flat)) / flat.size
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def encode_page(rgb: np.ndarray, encoding: str, jpeg_quality: int, min_psnr: float) -> tuple[bytes, str]:
    """Encoded bytes and their format (``png`` or ``jpeg``)."""
    if encoding != "jpeg" and is_gray(rgb):
        return _png(Image.fromarray(np.ascontiguousarray(rgb[..., 0]), mode="L")), "png"
    img = Image.fromarray(rgb, mode="RGB")
    if encoding == "png":
        return _png(img), "png"
    data = _jpeg(img, jpeg_quality)
    if encoding == "auto" and min_psnr > 0:
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        if psnr(decoded, rgb) < min_psnr:
            return _png(img), "png"
    return data, "jpeg"

