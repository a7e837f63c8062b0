"""OCR transcription tasks from the layout blocks: ``ocr-full`` (every page) and ``ocr-needle`` (1-3 pages).

Targets are the pages' text in reading order (header/footer blocks skipped), each page's text under
its page marker ``Page N:`` (the same marker the build stage puts before each page image).
"""

from __future__ import annotations

import random

from preprocess.synth.layout import format_pages, page_text, section_at
from preprocess.synth.segments import Segment
from preprocess.synth.validate import Rejected

PROMPT_VERSION = "ocr-v1"

FULL_INSTRUCTION = ("Transcribe the text of every page of this document in reading order. Write each "
                    "page's text under its page marker (\"Page 1:\", \"Page 2:\", ...), skipping running "
                    "headers, footers and page numbers.")
NEEDLE_INSTRUCTION = ("Transcribe the text on {pages} of this document in reading order. Write each "
                      "page's text under its page marker (\"Page N:\"), skipping running headers, footers "
                      "and page numbers.")


def transcript(texts: dict[int, str]) -> str:
    """``{page: text}`` -> ``"Page 1:\\n...\\n\\nPage 2:\\n..."`` in page order."""
    return "\n\n".join(f"Page {p}:\n{texts[p]}".rstrip() for p in sorted(texts))


def ocr_full(pool, doc: dict) -> dict:
    texts = {p: page_text(pool.page_blocks(doc["doc_id"], p)) for p in range(1, doc["num_pages"] + 1)}
    if not any(texts.values()):
        raise Rejected("no_content", "no text on any page")
    return {"question": FULL_INSTRUCTION, "answer": transcript(texts), "evidence_pages": sorted(texts),
            "segment": None}


def ocr_needle(pool, doc: dict, rng: random.Random, min_pages: int = 1, max_pages: int = 3) -> dict:
    n = doc["num_pages"]
    with_text = [p for p in range(1, n + 1) if doc["pages"][p - 1].get("has_text", True)]
    rng.shuffle(with_text)
    wanted = rng.randint(min_pages, max_pages)
    texts: dict[int, str] = {}
    for p in with_text:  # pages flagged has_text may still hold only headers/footers
        text = page_text(pool.page_blocks(doc["doc_id"], p))
        if text:
            texts[p] = text
            if len(texts) == wanted:
                break
    if len(texts) < min_pages:
        raise Rejected("no_content", f"fewer than {min_pages} page(s) with text")
    pages = sorted(texts)
    titles = [t for t in dict.fromkeys(section_at(doc, p) for p in pages) if t]
    segment = Segment(pages[0], pages[-1], titles, "needle")
    return {"question": NEEDLE_INSTRUCTION.format(pages=format_pages(pages)), "answer": transcript(texts),
            "evidence_pages": pages, "segment": segment.to_json()}
