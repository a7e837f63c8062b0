"""One PDF -> its pool entry (rendered pages, layout blocks, sections) or a rejection."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pymupdf

from megatron_vlm.models.registry import get_family
from preprocess.pool.config import PoolConfig
from preprocess.pool.encode import encode_page
from preprocess.pool.layout import label_document, page_blocks
from preprocess.pool.render import Rejected, page_geometry, render_page
from preprocess.pool.sections import document_sections

PDF_MAGIC = b"%PDF-"
HEADER_WINDOW = 1024  # the PDF header may follow up to 1 KiB of junk
TAIL_WINDOW = 2048  # a complete PDF ends with %%EOF (allowing some trailing bytes)

pymupdf.TOOLS.mupdf_display_errors(False)  # broken files are reported in rejected.jsonl instead
pymupdf.TOOLS.mupdf_display_warnings(False)
pymupdf.no_recommend_layout()


@dataclass
class DocumentResult:
    entry: dict  # the manifest line, without page_start
    pages: list[bytes] = field(default_factory=list)  # encoded page images
    layouts: list[bytes] = field(default_factory=list)  # UTF-8 JSON block lists


def check_file_bytes(head: bytes, tail: bytes) -> None:
    """Reject files that are not PDFs or are cut short, from their first and last bytes."""
    if not head:
        raise Rejected("not_pdf", "the file is empty (0 bytes)")
    if PDF_MAGIC not in head[:HEADER_WINDOW]:
        raise Rejected("not_pdf", "no %PDF- header in the first 1 KiB")
    if b"%%EOF" not in tail[-TAIL_WINDOW:]:
        raise Rejected("truncated", "no %%EOF marker at the end of the file (cut short?)")


def _open(path: str) -> pymupdf.Document:
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_WINDOW)
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_WINDOW))
            tail = f.read()
    except OSError as err:
        raise Rejected("unreadable", f"cannot read the file: {err.strerror or err}") from None
    check_file_bytes(head, tail)
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except MemoryError:  # never a document's fault
        raise
    except Exception as err:  # MuPDF raises several types for broken files
        raise Rejected("corrupt", f"MuPDF cannot open it: {err}") from None
    if doc.needs_pass:
        raise Rejected("encrypted", "the PDF needs a password")
    try:
        num_pages = doc.page_count
    except Exception as err:
        raise Rejected("corrupt", f"cannot read the page tree: {err}") from None
    if num_pages == 0:
        raise Rejected("no_pages", "the PDF has no pages")
    return doc


def check_page_count(num_pages: int, config: PoolConfig) -> None:
    too_few = config.min_pages and num_pages < config.min_pages
    too_many = config.max_pages and num_pages > config.max_pages
    if too_few or too_many:
        raise Rejected("page_count", f"{num_pages} pages, outside --min-pages {config.min_pages} "
                                     f"--max-pages {config.max_pages}")


def process_document(path: str, doc_id: str, config: PoolConfig,
                     beat: Callable[[int], None] = lambda page: None) -> DocumentResult:
    """Render, encode and parse every page of one PDF; Rejected with a reason code if unusable."""
    doc = _open(path)
    try:
        return _process(doc, path, doc_id, config, beat)
    finally:
        doc.close()


def _process(doc, path, doc_id, config, beat) -> DocumentResult:
    num_pages = doc.page_count
    check_page_count(num_pages, config)
    try:
        geometry = get_family(config.family).geometry
        geometries = [page_geometry(doc[i].rect, config.dpi, geometry, config.min_pixels, config.max_pixels, i + 1)
                      for i in range(num_pages)]
    except Rejected:
        raise
    except Exception as err:
        raise Rejected("corrupt", f"cannot load a page: {err}") from None
    result = DocumentResult(entry={})
    raw_blocks, records, heights = [], [], []
    for i, geo in enumerate(geometries):
        beat(i + 1)
        try:
            page = doc[i]
            raster = render_page(page, geo)
            data, fmt = encode_page(raster.rgb, config.encoding, config.jpeg_quality, config.min_psnr)
            del raster
            blocks, has_text = page_blocks(page, tables=config.tables)
            scanned = not has_text and _mostly_image(page)
        except MemoryError:  # never a document's fault
            raise
        except Exception as err:
            raise Rejected("corrupt", f"page {i + 1} fails to render or parse: {err}") from None
        result.pages.append(data)
        raw_blocks.append(blocks)
        heights.append(page.rect.height)
        records.append({"width": geo.width, "height": geo.height, "grid": geo.grid, "tokens": geo.tokens,
                        "has_text": has_text, "scanned": scanned, "format": fmt, "bytes": len(data)})
    labelled = label_document(raw_blocks, heights)
    result.layouts = [json.dumps(blocks, ensure_ascii=False, separators=(",", ":")).encode() for blocks in labelled]
    result.entry = {
        "doc_id": doc_id,
        "source": path,
        "num_pages": num_pages,
        "pages": records,
        "sections": document_sections(doc, labelled),
        "total_image_tokens": sum(r["tokens"] for r in records),
        "title": _title(doc, labelled),
        "scanned_pages": sum(r["scanned"] for r in records),
    }
    return result


def _mostly_image(page: pymupdf.Page) -> bool:
    """A page without text whose images cover at least half of it: a scan."""
    area = abs(page.rect) or 1.0
    covered = sum(abs(pymupdf.Rect(info["bbox"]) & page.rect) for info in page.get_image_info())
    return covered >= 0.5 * area


def _title(doc: pymupdf.Document, labelled: list[list[dict]]) -> str:
    blocks = [b["text"] for b in labelled[0] if b["label"] == "title"] if labelled else []
    if blocks:
        return " ".join(" ".join(blocks).split())
    return " ".join((doc.metadata or {}).get("title", "").split())
