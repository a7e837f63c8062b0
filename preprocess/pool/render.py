"""Page rendering: PDF page -> an RGB raster of exactly the size a model family takes it at.

A page is rendered with PyMuPDF at ``dpi`` and resized to the family's grid with its
``smart_resize`` (sides multiples of patch x merge: 28 or 32 pixels, within min/max pixels). Both
happen in one step: the page is rasterized directly at the target size (an anisotropic scale of at
most half a cell per side), which is sharper and faster than rendering and then resampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymupdf
from PIL import Image

from megatron_vlm.models.geometry import ImageGeometry

# ISO 32000 (Annex C): a page side is at most 14,400 user units (200 inches); below 1 pt is absurd.
MIN_PAGE_POINTS = 1.0
MAX_PAGE_POINTS = 14400.0


class Rejected(Exception):
    """A document (or one of its pages) that is not kept; ``reason`` is a rejected.jsonl code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PageGeometry:
    width: int  # pixels after smart_resize
    height: int
    grid: list[int]  # [rows, columns] of vision patches
    tokens: int  # LLM tokens


def page_geometry(rect: pymupdf.Rect, dpi: int, geometry: ImageGeometry, min_pixels: int, max_pixels: int,
                  page_number: int) -> PageGeometry:
    """The size ``geometry`` takes a page rendered at ``dpi``; Rejected for absurd sizes or aspect ratios."""
    w_pt, h_pt = rect.width, rect.height
    if not (MIN_PAGE_POINTS <= w_pt <= MAX_PAGE_POINTS and MIN_PAGE_POINTS <= h_pt <= MAX_PAGE_POINTS):
        raise Rejected("page_size", f"page {page_number} is {w_pt:.1f} x {h_pt:.1f} pt "
                           f"(allowed {MIN_PAGE_POINTS:g}-{MAX_PAGE_POINTS:g} pt per side)")
    zoom = dpi / 72.0
    irect = (rect * pymupdf.Matrix(zoom, zoom)).irect  # the same rounding as get_pixmap(dpi=...)
    rw, rh = irect.width, irect.height
    try:
        h, w = geometry.smart_resize(rh, rw, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as err:
        reason = "aspect_ratio" if "aspect ratio" in str(err) else "page_size"
        raise Rejected(reason, f"page {page_number} ({rw}x{rh} px at {dpi} dpi): {err}") from None
    _, rows, cols = geometry.grid_thw(h, w)
    return PageGeometry(w, h, [rows, cols], geometry.llm_tokens(h, w))


class Raster:
    """An RGB page raster: ``rgb`` is a ``[height, width, 3]`` uint8 view of MuPDF's pixmap,
    valid while this object (which holds the pixmap) is alive."""

    def __init__(self, pixmap: pymupdf.Pixmap):
        self.pixmap = pixmap
        self.rgb = np.frombuffer(pixmap.samples_mv, dtype=np.uint8).reshape(pixmap.height, pixmap.width, 3)


def render_page(page: pymupdf.Page, geo: PageGeometry) -> Raster:
    """The page rasterized at exactly the target size."""
    rect = page.rect
    matrix = pymupdf.Matrix(geo.width / rect.width, geo.height / rect.height)
    pix = page.get_pixmap(matrix=matrix, colorspace=pymupdf.csRGB, alpha=False)
    if (pix.width, pix.height) != (geo.width, geo.height):  # MuPDF rounded a side differently
        img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        img = img.resize((geo.width, geo.height), Image.Resampling.BICUBIC)
        pix = pymupdf.Pixmap(pymupdf.csRGB, geo.width, geo.height, img.tobytes(), False)
    return Raster(pix)
