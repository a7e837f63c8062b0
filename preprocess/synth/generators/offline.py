"""The ``offline`` generator: deterministic QA pairs read off the layout blocks of a segment (no model).

Every answer is text of the cited evidence pages, so it needs reading the page content (not page
numbers alone):

- ``extract-single``: a table cell (named by its row's first cell and its column), a figure/table
  caption, a section heading, or the completion of a sentence, on one page;
- ``extract-multi``: the section headings / captions / first paragraph's first sentence of 2-3 pages;
- ``reasoning``: how many section headings / captions pages a-b of the segment hold (2-10 of them),
  listed with their pages; or which of two rows of a table has the larger number in a column.

Multi-item answers put one item per line as ``Page N: text`` (reasoning: the count on the first line).
"""

from __future__ import annotations

import random
import re
from collections import Counter

from preprocess.synth.generators.base import QARequest
from preprocess.synth.layout import HEADING_LABELS, clean, content_blocks, format_pages, section_at
from preprocess.synth.validate import Rejected

PROMPT_VERSION = "offline-v1"
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'“])")
_CAPTION = re.compile(r"^\S+\s*[\dIVX]+(\.\d+)*[.:]\s")  # "Figure 3: ...", "Table 2.1. ..."
MAX_COUNT = 10  # reasoning counts at most this many items (a sub-range of the segment otherwise)
# VQA task kind -> its question makers (methods of OfflineGenerator), tried in a seeded order.
QUESTION_MAKERS = {
    "extract-single": ("_single_row", "_single_caption", "_single_heading", "_single_sentence"),
    "extract-multi": ("_multi_headings", "_multi_captions", "_multi_sentences"),
    "reasoning": ("_count_headings", "_count_captions", "_compare_cells"),
}


def _short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


def _words(text: str) -> int:
    return len(text.split())


def _is_texty(text: str) -> bool:
    """Holds a word (3+ letters) and no unmapped glyphs (U+FFFD): worth asking about."""
    return "\ufffd" not in text and re.search(r"[^\W\d_]{3}", text) is not None


class _Page:
    """The askable facts of one page."""

    def __init__(self, number: int, blocks: list[dict]):
        self.number = number
        blocks = content_blocks(blocks)
        self.headings = [t for b in blocks if b["label"] in HEADING_LABELS
                         for t in [clean(b["text"])] if _is_texty(t) and len(t) <= 200 and not t[0].islower()]
        self.captions = [_short(t) for b in blocks if b["label"] == "caption"
                         for t in [clean(b["text"])] if _is_texty(t) and _words(t) >= 3 and _CAPTION.match(t)]
        self.sentences = [s for b in blocks if b["label"] in ("paragraph", "list")
                          for s in _SENTENCE_END.split(clean(b["text"])) if 8 <= _words(s) <= 60 and _is_texty(s)]
        paragraphs = [clean(b["text"]) for b in blocks if b["label"] == "paragraph"]
        first = _SENTENCE_END.split(paragraphs[0])[0] if paragraphs else ""
        # a real sentence (not a running header the layout missed, nor the tail of the previous page's)
        self.first_sentence = first if (_words(first) >= 5 and _is_texty(first) and first[0].isupper()
                                        and first.endswith((".", "!", "?"))) else None
        self.tables = [rows for b in blocks if b["label"] == "table" for rows in [_table_rows(b["text"])] if rows]
        self.rows = [row for rows in self.tables for row in rows]
        # only on pages with one table, so that "the table on page N" is unambiguous
        self.comparisons = _numeric_pairs(self.tables[0]) if len(self.tables) == 1 else []


def _cell(text: str) -> str:
    """A Markdown table cell as plain text: ``<br>`` and emphasis/code marks removed."""
    text = text.replace("<br>", " ").replace("**", "").replace("`", "")
    return clean(re.sub(r"(?<!\w)_(\S(?:.*?\S)?)_(?!\w)", r"\1", text))


def _good_header(text: str) -> bool:
    """Not a placeholder ("Col3") nor a fragment cut off by the table finder ("nputs")."""
    return _is_texty(text) and not re.fullmatch(r"Col\d+", text) and not text[0].islower() and len(text) <= 60


def _table_rows(text: str) -> list[tuple[str, str | None, str]]:
    """``(first cell, column header or None, cell)`` facts of the rows of a table whose first cell is unique.

    Markdown tables (``|a|b|`` rows, as the pool writes them) give one fact per cell under a real
    header; other tables give one fact per line (its first cell, then the rest of the line).
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rows: list[tuple[str, list[tuple[str | None, str]]]] = []
    if lines and lines[0].startswith("|"):
        cells = [[_cell(c) for c in line.strip("|").split("|")]
                 for line in lines if not re.fullmatch(r"[|:\-\s]+", line)]
        header = cells[0] if cells else []
        for row in cells[1:]:
            rows.append((row[0], [(header[j], row[j]) for j in range(1, min(len(row), len(header)))
                                  if _good_header(header[j]) and row[j] and header[j] != row[j]]))
    else:
        for line in lines:
            parts = [c for c in re.split(r"\s{2,}|\t", line) if c]
            if len(parts) < 2:
                parts = line.split(" ", 1)
            if len(parts) >= 2:
                rows.append((clean(parts[0]), [(None, clean(" ".join(parts[1:])))]))
    keys = Counter(key for key, _ in rows)
    return [(key, column, value) for key, cells in rows if keys[key] == 1 and 2 <= len(key) <= 80
            for column, value in cells if _is_texty(key + value) and len(value) <= 200]


def _number(text: str) -> float | None:
    """The value of a numeric cell ("1,234.5", "45%", "220 tonnes"), else None ("2^12-1", "v2")."""
    match = re.fullmatch(r"(-?\d{1,3}(?:,\d{3})+|-?\d+)(\.\d+)?%?(?:\s+[^\W\d][^\d]*)?", text.strip())
    return float(match.group(1).replace(",", "") + (match.group(2) or "")) if match else None


def _numeric_pairs(rows: list[tuple[str, str | None, str]]) -> list[tuple[tuple, tuple]]:
    """Pairs of rows with different numbers in the same column (for comparison questions)."""
    numeric = [(key, column, value) for key, column, value in rows if _number(value) is not None]
    return [(a, b) for i, a in enumerate(numeric) for b in numeric[i + 1:]
            if a[1] == b[1] and _number(a[2]) != _number(b[2])]


def _nth(items: list, i: int, noun: str) -> str:
    return f"the {noun}" if len(items) == 1 else f"the {_ORDINALS[i] if i < len(_ORDINALS) else f'#{i + 1}'} {noun}"


class OfflineGenerator:
    """Deterministic for a given request (its ``seed``); thread-safe (no state)."""

    def info(self, task: str) -> dict:
        return {"name": "offline", "model": None, "prompt_version": PROMPT_VERSION}

    def stats(self) -> dict:
        return {}

    def generate(self, pool, request: QARequest) -> dict:
        rng = random.Random(request.seed)
        doc_id = request.doc["doc_id"]
        pages = [_Page(p, pool.page_blocks(doc_id, p)) for p in request.segment.pages]
        makers = list(QUESTION_MAKERS[request.task])
        rng.shuffle(makers)
        for make in makers:
            qa = getattr(self, make)(rng, request, pages)
            if qa is not None:
                return qa
        raise Rejected("no_content", f"nothing to ask about on pages {request.segment.first_page}-"
                                     f"{request.segment.last_page} for {request.task}")

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _where(request: QARequest, page: int) -> str:
        """The question's anchor: the page, and the section around it when there is one."""
        title = section_at(request.doc, page)
        return f"on page {page}" + (f" (in the section \"{title}\")" if title else "")

    @staticmethod
    def _qa(question: str, answer: str, evidence: str, pages: list[int]) -> dict:
        return {"question": question, "answer": answer, "evidence": evidence, "evidence_pages": sorted(pages)}

    # -- extract-single ---------------------------------------------------------------------
    def _single_row(self, rng, request, pages):
        page = rng.choice([p for p in pages if p.rows] or [None])
        if page is None:
            return None
        key, column, value = rng.choice(page.rows)
        asked = f"in the column \"{column}\"" if column else f"after \"{key}\""
        return self._qa(f"In the table {self._where(request, page.number)}, what does the row that starts "
                        f"with \"{key}\" say {asked}?", value,
                        f"The row \"{key}\" of the table on page {page.number}.", [page.number])

    def _single_caption(self, rng, request, pages):
        page = rng.choice([p for p in pages if p.captions] or [None])
        if page is None:
            return None
        i = rng.randrange(len(page.captions))
        return self._qa(f"What does {_nth(page.captions, i, 'figure or table caption')} "
                        f"{self._where(request, page.number)} say?", page.captions[i],
                        f"The caption on page {page.number}.", [page.number])

    def _single_heading(self, rng, request, pages):
        page = rng.choice([p for p in pages if p.headings] or [None])
        if page is None:
            return None
        i = rng.randrange(len(page.headings))
        return self._qa(f"What does {_nth(page.headings, i, 'section heading')} on page {page.number} say?",
                        page.headings[i],
                        f"The section heading on page {page.number}.", [page.number])

    def _single_sentence(self, rng, request, pages):
        page = rng.choice([p for p in pages if p.sentences] or [None])
        if page is None:
            return None
        sentence = rng.choice(page.sentences)
        start = " ".join(sentence.split()[:6])
        where = self._where(request, page.number)
        return self._qa(f"{where[0].upper()}{where[1:]}, complete the sentence that "
                        f"begins \"{start}\".", sentence,
                        f"The sentence in the text of page {page.number}.", [page.number])

    # -- extract-multi ----------------------------------------------------------------------
    def _multi(self, rng, request, pages, attr, noun, question):
        having = [p for p in pages if getattr(p, attr)]
        if len(having) < 2:
            return None
        chosen = sorted(rng.sample(having, min(len(having), rng.randint(2, 3))), key=lambda p: p.number)
        numbers = [p.number for p in chosen]
        lines = [f"Page {p.number}: {item}" for p in chosen for item in getattr(p, attr)]
        return self._qa(question.format(pages=format_pages(numbers)), "\n".join(lines),
                        f"The {noun} on {format_pages(numbers)}.", numbers)

    def _multi_headings(self, rng, request, pages):
        return self._multi(rng, request, pages, "headings", "section headings",
                           "List the section headings that appear on {pages}, each with its page.")

    def _multi_captions(self, rng, request, pages):
        return self._multi(rng, request, pages, "captions", "figure and table captions",
                           "List the figure and table captions on {pages}, each with its page.")

    def _multi_sentences(self, rng, request, pages):
        firsts = [p for p in pages if p.first_sentence]
        if len(firsts) < 2:
            return None
        chosen = sorted(rng.sample(firsts, min(len(firsts), rng.randint(2, 3))), key=lambda p: p.number)
        numbers = [p.number for p in chosen]
        return self._qa(f"Quote the first sentence of the first paragraph of body text on {format_pages(numbers)}, "
                        "each with its page.", "\n".join(f"Page {p.number}: {p.first_sentence}" for p in chosen),
                        f"The body text of {format_pages(numbers)}.", numbers)

    # -- reasoning --------------------------------------------------------------------------
    def _count(self, rng, pages, attr, noun):
        sizes = [len(getattr(p, attr)) for p in pages]
        ranges = [(i, j) for i in range(len(pages)) for j in range(i + 1, len(pages))
                  if 2 <= sum(sizes[i:j + 1]) <= MAX_COUNT]
        if not ranges:
            return None
        i, j = (0, len(pages) - 1) if (0, len(pages) - 1) in ranges else rng.choice(ranges)
        first, last = pages[i].number, pages[j].number
        items = [(p.number, item) for p in pages[i:j + 1] for item in getattr(p, attr)]
        lines = [str(len(items))] + [f"Page {n}: {item}" for n, item in items]
        return self._qa(f"How many {noun} are there on pages {first}-{last}? Give the number, "
                        f"then list them with their pages.", "\n".join(lines),
                        f"The {noun} of pages {first}-{last}, counted.", sorted({n for n, _ in items}))

    def _count_headings(self, rng, request, pages):
        return self._count(rng, pages, "headings", "section headings")

    def _count_captions(self, rng, request, pages):
        return self._count(rng, pages, "captions", "figure and table captions")

    def _compare_cells(self, rng, request, pages):
        page = rng.choice([p for p in pages if p.comparisons] or [None])
        if page is None:
            return None
        a, b = rng.choice(page.comparisons)
        column = a[1]
        what = f"the \"{column}\" of \"{a[0]}\" or of \"{b[0]}\"" if column else \
            f"the value of \"{a[0]}\" or the value of \"{b[0]}\""
        winner, loser = (a, b) if _number(a[2]) > _number(b[2]) else (b, a)
        return self._qa(f"In the table {self._where(request, page.number)}, which is larger: {what}? Answer with "
                        f"the row, then the two values.", f"{winner[0]} ({winner[2]} vs {loser[2]})",
                        f"Rows \"{a[0]}\" and \"{b[0]}\" of the table on page {page.number}.", [page.number])
