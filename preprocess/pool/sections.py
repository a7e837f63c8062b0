"""Section structure (title, level, first_page, last_page) of a document.

From the PDF outline when it has at least two entries pointing at pages; otherwise from the
``section_header`` blocks: levels by font-size ranking (largest = 1, at most 3 levels), or by the
depth of the numbering ("2.3.1" = 3) where headers are numbered. A section runs until the next
section of the same or a higher level starts: up to the page before it when that section starts at
the top of its page, else up to and including that page.
"""

from __future__ import annotations

import re

import pymupdf

_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+\S")
MAX_LEVELS = 3
TOP_SLACK = 36.0  # points: a header this close to the top of the text "starts at the top of its page"


def _finish(entries: list[dict], num_pages: int, source: str) -> list[dict]:
    """Add last_page to entries (title, level, first_page, at_top) in document order."""
    out = []
    for i, e in enumerate(entries):
        last = num_pages
        for nxt in entries[i + 1:]:
            if nxt["level"] <= e["level"]:
                last = nxt["first_page"] - 1 if nxt["at_top"] else nxt["first_page"]
                break
        out.append({"title": e["title"], "level": e["level"], "first_page": e["first_page"],
                    "last_page": max(e["first_page"], min(last, num_pages)), "source": source})
    return out


def _content_top(blocks: list[dict]) -> float:
    ys = [b["bbox"][1] for b in blocks if b["label"] != "header_footer"]
    return min(ys) if ys else 0.0


def from_outline(doc: pymupdf.Document, pages: list[list[dict]]) -> list[dict]:
    """Sections from the PDF outline (empty when it has fewer than two usable entries)."""
    entries = []
    for level, title, page, dest in doc.get_toc(simple=False):
        if not 1 <= page <= doc.page_count or not title.strip():
            continue
        blocks = pages[page - 1]
        to = dest.get("to") if isinstance(dest, dict) else None
        at_top = to is None or to.y <= _content_top(blocks) + TOP_SLACK
        entries.append({"title": " ".join(title.split()), "level": level, "first_page": page,
                        "at_top": bool(at_top)})
    if len(entries) < 2:
        return []
    return _finish(entries, doc.page_count, "outline")


def from_layout(pages: list[list[dict]]) -> list[dict]:
    """Sections from section_header blocks: numbering depth, else font-size rank."""
    headers = []
    for i, blocks in enumerate(pages):
        top = _content_top(blocks)
        body = [b for b in blocks if b["label"] != "header_footer"]
        for j, b in enumerate(body):
            if b["label"] != "section_header":
                continue
            first_on_page = j == 0 or all(x["label"] == "section_header" for x in body[:j])
            headers.append({"block": b, "page": i + 1,
                            "at_top": first_on_page and b["bbox"][1] <= top + TOP_SLACK})
    sizes = sorted({h["block"]["font_size"] for h in headers}, reverse=True)
    rank = {s: min(k + 1, MAX_LEVELS) for k, s in enumerate(sizes)}
    entries = []
    for h in headers:
        title = " ".join(h["block"]["text"].split())
        m = _NUMBER.match(title)
        level = min(m.group(1).count(".") + 1, MAX_LEVELS) if m else rank[h["block"]["font_size"]]
        entries.append({"title": title, "level": level, "first_page": h["page"], "at_top": h["at_top"]})
    return _finish(entries, len(pages), "layout")


def document_sections(doc: pymupdf.Document, pages: list[list[dict]]) -> list[dict]:
    """Outline sections when the outline is usable, else layout sections."""
    return from_outline(doc, pages) or from_layout(pages)
