"""Short-to-long segment sampling: one or more consecutive sections spanning MIN-MAX pages.

The pool's sections form a tree (``level`` 1 = top). Sections longer than the maximum span are
replaced by their subsections, giving a list of consecutive *units* in document order; a segment
is a run of consecutive units whose pages span ``min_pages..max_pages``. A document with no such
run falls back to a random window of pages; a document shorter than ``min_pages`` is one segment.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Segment:
    first_page: int  # 1-based, inclusive
    last_page: int
    sections: list[str] = field(default_factory=list)  # titles of the sections it consists of
    source: str = "sections"  # "sections", "window" (no usable sections) or "document" (too short)

    @property
    def pages(self) -> list[int]:
        return list(range(self.first_page, self.last_page + 1))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class _Node:
    section: dict
    children: list[_Node] = field(default_factory=list)

    @property
    def span(self) -> int:
        return self.section["last_page"] - self.section["first_page"] + 1


def _tree(sections: list[dict], num_pages: int) -> list[_Node]:
    """Nest the valid sections by level and page range (the pool lists them in document order)."""
    valid = [s for s in sections
             if s.get("title", "").strip() and 1 <= s["first_page"] <= s["last_page"] <= num_pages]
    valid.sort(key=lambda s: s["first_page"])  # stable: sections starting on one page keep their order
    roots: list[_Node] = []
    stack: list[_Node] = []
    for s in valid:
        node = _Node(s)
        while stack and (stack[-1].section["level"] >= s["level"]
                         or s["first_page"] > stack[-1].section["last_page"]):
            stack.pop()
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)
    return roots


def section_units(doc: dict, max_pages: int) -> list[dict]:
    """Consecutive sections in document order, each split into subsections while too long."""
    units: list[dict] = []

    def visit(nodes: list[_Node]) -> None:
        for node in nodes:
            if node.span > max_pages and node.children:
                visit(node.children)
            else:
                units.append(node.section)

    visit(_tree(doc.get("sections") or [], doc["num_pages"]))
    return units


def segment_candidates(doc: dict, min_pages: int, max_pages: int) -> list[Segment]:
    """Every run of consecutive section units spanning ``min_pages..max_pages`` pages."""
    units = section_units(doc, max_pages)
    out = []
    for i, first in enumerate(units):
        last_page = first["last_page"]
        for j in range(i, len(units)):
            last_page = max(last_page, units[j]["last_page"])
            span = last_page - first["first_page"] + 1
            if span > max_pages:
                break
            if span >= min_pages:
                titles = [u["title"].strip() for u in units[i:j + 1]]
                out.append(Segment(first["first_page"], last_page, titles, "sections"))
    return out


def sample_segment(doc: dict, rng: random.Random, min_pages: int = 8, max_pages: int = 15) -> Segment:
    """One segment of ``doc`` (a manifest entry), chosen with ``rng``."""
    candidates = segment_candidates(doc, min_pages, max_pages)
    if candidates:
        return rng.choice(candidates)
    n = doc["num_pages"]
    if n <= min_pages:
        return Segment(1, n, [], "document")
    length = rng.randint(min_pages, min(max_pages, n))
    start = rng.randint(1, n - length + 1)
    return Segment(start, start + length - 1, [], "window")
