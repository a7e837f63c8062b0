"""An in-memory stand-in for ``preprocess.pool.Pool`` (same interface) with known page content."""

from __future__ import annotations

import io
import re

from PIL import Image

SECTIONS = [  # a 30-page report: chapters, one of them too long for a segment without its subsections
    {"title": "Introduction", "level": 1, "first_page": 1, "last_page": 4},
    {"title": "Methods", "level": 1, "first_page": 5, "last_page": 20},
    {"title": "Data Collection", "level": 2, "first_page": 5, "last_page": 11},
    {"title": "Model Design", "level": 2, "first_page": 12, "last_page": 20},
    {"title": "Results", "level": 1, "first_page": 21, "last_page": 26},
    {"title": "Discussion", "level": 1, "first_page": 27, "last_page": 30},
]


def page_blocks(doc_index: int, page: int, sections: list[dict]) -> list[dict]:
    """Blocks of one fake page: running header, headings where sections start, text, captions, tables."""
    def block(label, text):
        return {"bbox": [50, 50, 500, 80], "text": text, "font_size": 10.0, "bold": label != "paragraph",
                "label": label}

    blocks = [block("header_footer", f"Annual Report {doc_index} running header")]
    blocks += [block("section_header", s["title"]) for s in sections if s["first_page"] == page]
    blocks.append(block("paragraph", f"Page {page} opens the chapter on crops. The measured rate of sample alpha-{doc_index}-{page} "
                                     f"was {page * 7 + doc_index} units in the spring campaign. "
                                     f"A second sentence follows on page {page} for the reader."))
    if page % 3 == 0:
        blocks.append(block("caption", f"Figure {page}: Growth of crop number {page} over ten seasons."))
    if page % 8 == 0:  # a Markdown table, as the pool writes ruled tables
        blocks.append(block("table", f"|Region|Yield|Unit|\n|---|---|---|\n|North-{page}|{page * 11}|tonnes|\n"
                                     f"|South-{page}|{page * 13}|tonnes|"))
    elif page % 4 == 0:
        blocks.append(block("table", f"Region  Yield\nNorth-{page}  {page * 11} tonnes\nSouth-{page}  "
                                     f"{page * 13} tonnes"))
    blocks.append(block("header_footer", str(page)))
    return blocks


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(out, format="PNG")
    return out.getvalue()


class FakePool:
    encoding = "png"

    def __init__(self, num_docs: int = 2, num_pages: int = 30, sections: list[dict] | None = SECTIONS):
        self.documents = []
        self._blocks = {}
        for d in range(num_docs):
            doc_id = f"{d:064x}"
            secs = [dict(s) for s in (sections or []) if s["last_page"] <= num_pages]
            self.documents.append({
                "doc_id": doc_id, "source": f"doc{d}.pdf", "num_pages": num_pages, "page_start": d * num_pages,
                "pages": [{"width": 28, "height": 28, "grid": [2, 2], "tokens": 1, "has_text": True}] * num_pages,
                "sections": secs, "total_image_tokens": num_pages})
            for p in range(1, num_pages + 1):
                self._blocks[doc_id, p] = page_blocks(d, p, secs)

    def __len__(self):
        return len(self.documents)

    def get(self, doc_id):
        return next(d for d in self.documents if d["doc_id"] == doc_id)

    def page_blocks(self, doc_id, page_number):
        return self._blocks[doc_id, page_number]

    def page_bytes(self, doc_id, page_number):
        index = next(i for i, d in enumerate(self.documents) if d["doc_id"] == doc_id)
        return png((index, page_number, 7))


def answer_items(record: dict) -> list[tuple[int, str]]:
    """``(page, text)`` pieces of an offline VQA answer that must be text of that evidence page.

    Checks the answer's own structure on the way: a count equals the number of listed items, a
    comparison names the larger of the two values (parsed here, independently of the generator).
    """
    task, answer, pages = record["task"], record["answer"], record["evidence_pages"]
    if task == "extract-single":
        assert len(pages) == 1
        return [(pages[0], answer)]
    lines = answer.splitlines()
    if task == "reasoning" and not lines[0].isdigit():
        key, big, small = re.fullmatch(r"(.+) \((.+) vs (.+)\)", answer).groups()
        number = lambda s: float(re.match(r"-?[\d,]+(\.\d+)?", s)[0].replace(",", ""))  # noqa: E731
        assert number(big) > number(small) and f'"{key}"' in record["question"] and len(pages) == 1
        return [(pages[0], big), (pages[0], small)]
    if task == "reasoning":
        assert int(lines[0]) == len(lines) - 1 >= 2
        lines = lines[1:]
    items = [(int(m[1]), m[2]) for m in (re.fullmatch(r"Page (\d+): (.+)", line) for line in lines)]
    assert {p for p, _ in items} == set(pages) and len(pages) >= (2 if task == "extract-multi" else 1)
    return items
