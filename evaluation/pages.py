"""Page images of an evaluation context, loaded only when a backend needs them.

Every page has its size for the model family up front (``height``, ``width``: multiples of the
family geometry's factor, 28 or 32 pixels, so the prompt can be built and measured without decoding
anything) and gives, on demand, its pixels (``HxWx3`` uint8, decoded as the training loader decodes
pool pages) and encoded bytes (for API backends):

- :class:`PoolPage`: a page of the document pool, exactly as training sees it (resized to the
  family's grid if the pool was rendered for another);
- :class:`PdfPage`: a PDF page rendered like the pool renders (``dpi``, then smart_resize in one
  rasterization, ``preprocess.pool.render``);
- :class:`ImagePage`: an image file (a slide of a SlideVQA deck, an MM-NIAH image) resized as the
  model family's processor resizes it (``smart_resize``, bicubic);
- :class:`EditedPage`: another page cut to its top-left part and/or with a needle drawn onto it.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from megatron_vlm.models.geometry import ImageGeometry

# PyMuPDF is not thread-safe: one lock around opening and rendering documents.
_PDF_LOCK = threading.RLock()


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG of an ``HxWx3`` uint8 page (fast compression: a page is sent once)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()


class Page:
    height: int
    width: int
    geometry: ImageGeometry  # the model family's: the page's size is a multiple of its factor

    @property
    def tokens(self) -> int:
        """LLM tokens of the page (one per factor x factor pixels)."""
        return (self.height // self.geometry.factor) * (self.width // self.geometry.factor)

    def pixels(self) -> np.ndarray:
        raise NotImplementedError

    def encoded(self) -> bytes:
        return encode_png(self.pixels())

    def describe(self) -> dict:
        """Where the page comes from, for the results."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class PoolPage(Page):
    pool: object
    doc_id: str
    page_number: int
    height: int
    width: int
    geometry: ImageGeometry

    @classmethod
    def of(cls, pool, doc: dict, page_number: int, geometry: ImageGeometry) -> PoolPage:
        """Page ``page_number`` of ``doc`` at ``geometry`` (its stored size, or where the pool was rendered for
        another family the size it is resized to within the pool's pixel bounds, as ``longvlm build`` does)."""
        entry = doc["pages"][page_number - 1]
        height, width = geometry.fit_size(int(entry["height"]), int(entry["width"]), *pool.pixel_bounds)
        return cls(pool, doc["doc_id"], page_number, height, width, geometry)

    def pixels(self) -> np.ndarray:
        from megatron_vlm.data.dataset import decode_page

        pixels = decode_page(self.pool.page_bytes(self.doc_id, self.page_number))
        return self.geometry.fit(pixels, self.height, self.width)

    def encoded(self) -> bytes:
        stored = self.pool.get(self.doc_id)["pages"][self.page_number - 1]
        if (stored["height"], stored["width"]) != (self.height, self.width):
            return super().encoded()  # resized for the family
        return self.pool.page_bytes(self.doc_id, self.page_number)

    def describe(self) -> dict:
        return {"doc_id": self.doc_id, "page": self.page_number}


@lru_cache(maxsize=4)
def _open_pdf(path: str):
    import pymupdf

    return pymupdf.open(path)


@dataclass(frozen=True, eq=False)
class PdfPage(Page):
    path: str
    page_number: int  # 1-based
    height: int
    width: int
    geometry: ImageGeometry

    @classmethod
    def document(cls, path: str | Path, dpi: int, geometry: ImageGeometry, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> list[PdfPage]:
        """Every page of a PDF at its size for ``dpi`` and the family ``geometry`` (``min/max_pixels``: its
        smart_resize bounds, default the family's); ValueError names a bad page."""
        min_pixels = geometry.min_pixels if min_pixels is None else min_pixels
        max_pixels = geometry.max_pixels if max_pixels is None else max_pixels
        from preprocess.pool.render import Rejected, page_geometry

        path = str(path)
        with _PDF_LOCK:
            doc = _open_pdf(path)
            pages = []
            for index, page in enumerate(doc):
                try:
                    geo = page_geometry(page.rect, dpi, geometry, min_pixels, max_pixels, index + 1)
                except Rejected as err:
                    raise ValueError(f"{path}: {err.detail}") from None
                pages.append(cls(path, index + 1, geo.height, geo.width, geometry))
        return pages

    def pixels(self) -> np.ndarray:
        from preprocess.pool.render import PageGeometry, render_page

        with _PDF_LOCK:
            geo = PageGeometry(self.width, self.height, list(self.geometry.grid_thw(self.height, self.width)[1:]),
                               self.tokens)
            raster = render_page(_open_pdf(self.path)[self.page_number - 1], geo)
            return raster.rgb.copy()

    def describe(self) -> dict:
        return {"pdf": self.path, "page": self.page_number}


@dataclass(frozen=True, eq=False)
class ImagePage(Page):
    path: str
    height: int
    width: int
    geometry: ImageGeometry

    @classmethod
    def of(cls, path: str | Path, geometry: ImageGeometry, min_pixels: int | None = None,
           max_pixels: int | None = None) -> ImagePage:
        """The image at its size for the family ``geometry``; ValueError names an unreadable image or a bad
        aspect ratio."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                height, width = geometry.smart_resize(image.height, image.width, min_pixels=min_pixels,
                                                      max_pixels=max_pixels)
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        return cls(str(path), height, width, geometry)

    def pixels(self) -> np.ndarray:
        from PIL import Image

        with Image.open(self.path) as image:
            return np.asarray(image.convert("RGB").resize((self.width, self.height), Image.BICUBIC))

    def describe(self) -> dict:
        return {"image": self.path}


@dataclass(frozen=True)
class Needle:
    """Text drawn in a white box across a page, its top at pixel row ``top`` (a multiple of the factor)."""

    text: str
    top: int
    height: int  # pixels of the box (a multiple of the factor)
    font_size: int


def needle_font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def wrap(text: str, font, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels (a word longer than that stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def needle_box(text: str, page_width: int, font_size: int, factor: int) -> tuple[list[str], int]:
    """The lines of the needle on a page of ``page_width`` pixels and the box height (rows of ``factor`` px)."""
    font = needle_font(font_size)
    margin = font_size
    lines = wrap(text, font, max(page_width - 2 * margin, font_size))
    line_height = int(font_size * 1.3)
    height = len(lines) * line_height + 2 * margin
    return lines, -(-height // factor) * factor


def needle_fits(text: str, page_width: int, font_size: int) -> bool:
    """Whether every word of the needle fits across a page of ``page_width`` pixels."""
    font = needle_font(font_size)
    return max(font.getlength(word) for word in text.split()) + 2 * font_size <= page_width


def draw_needle(pixels: np.ndarray, needle: Needle) -> np.ndarray:
    """A copy of ``pixels`` with the needle drawn: black text on white, over the page's full width."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    draw = ImageDraw.Draw(image)
    font = needle_font(needle.font_size)
    lines, _ = needle_box(needle.text, image.width, needle.font_size, 1)
    draw.rectangle([0, needle.top, image.width - 1, needle.top + needle.height - 1], fill=(255, 255, 255))
    y = needle.top + needle.font_size
    for line in lines:
        draw.text((needle.font_size, y), line, fill=(0, 0, 0), font=font)
        y += int(needle.font_size * 1.3)
    return np.asarray(image)


@dataclass(frozen=True, eq=False)
class EditedPage(Page):
    """The top-left ``height x width`` pixels of ``base`` (a partial page; default: all of it), with a
    needle drawn on it or not."""

    base: Page
    height: int
    width: int
    needle: Needle | None = None

    @property
    def geometry(self) -> ImageGeometry:
        return self.base.geometry

    def __post_init__(self) -> None:
        factor = self.geometry.factor
        for name, size, limit in (("height", self.height, self.base.height), ("width", self.width, self.base.width)):
            if size % factor or not 0 < size <= limit:
                raise ValueError(f"a page cut to {name} {size} px must be a multiple of {factor} in 1..{limit}")

    def pixels(self) -> np.ndarray:
        pixels = self.base.pixels()[: self.height, : self.width]
        return pixels if self.needle is None else draw_needle(pixels, self.needle)

    def describe(self) -> dict:
        out = dict(self.base.describe())
        if (self.height, self.width) != (self.base.height, self.base.width):
            out["cut"] = [self.height // self.geometry.factor, self.width // self.geometry.factor]  # rows, columns
        if self.needle is not None:
            out["needle_row"] = self.needle.top // self.geometry.factor
        return out
