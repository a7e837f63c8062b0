"""Reading the pool's layout blocks: clean block text, page text in reading order, section lookup."""

from __future__ import annotations

import re

HEADING_LABELS = ("title", "section_header")
SKIPPED_LABELS = ("header_footer",)


def clean(text: str) -> str:
    """Block text on one line: whitespace runs collapsed, ends stripped."""
    return re.sub(r"\s+", " ", text or "").strip()


def content_blocks(blocks: list[dict]) -> list[dict]:
    """The blocks that carry page content: non-empty text, headers and footers dropped."""
    return [b for b in blocks if b.get("label") not in SKIPPED_LABELS and clean(b.get("text", ""))]


def page_text(blocks: list[dict]) -> str:
    """A page's text in reading order (the block order), one block per line, headers/footers skipped.

    Unmapped glyphs (U+FFFD, no Unicode in the PDF) are dropped: they cannot be transcribed.
    """
    return "\n".join(t for b in content_blocks(blocks) for t in [b["text"].replace("\ufffd", "").strip()] if t)


def section_at(doc: dict, page: int) -> str | None:
    """Title of the innermost section covering ``page`` (1-based), or ``None``."""
    best = None
    for s in doc.get("sections") or []:
        if s["first_page"] <= page <= s["last_page"] and clean(s.get("title", "")):
            if best is None or (s["level"], s["first_page"]) >= (best["level"], best["first_page"]):
                best = s
    return clean(best["title"]) if best else None


def format_pages(pages: list[int]) -> str:
    """``[3]`` -> ``"page 3"``; ``[3, 5, 9]`` -> ``"pages 3, 5 and 9"``."""
    pages = sorted(pages)
    if len(pages) == 1:
        return f"page {pages[0]}"
    return "pages " + ", ".join(str(p) for p in pages[:-1]) + f" and {pages[-1]}"
