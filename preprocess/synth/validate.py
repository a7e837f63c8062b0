"""Validation of generated instances; every rejection has a machine-readable reason (counted).

Reasons: ``malformed`` (not the JSON object asked for), ``empty_answer``, ``evidence_outside_segment``,
``no_anchor`` (no explicit segment anchor in the question), ``anchor_outside_segment`` (the question
names pages outside the segment), ``wrong_evidence_count`` (outside the task kind's
``evidence_pages``), ``duplicate_question`` (same document, same normalized question).
"""

from __future__ import annotations

import re

from megatron_vlm.formats.tasks import task_kind
from preprocess.synth.segments import Segment

REASONS = ("malformed", "empty_answer", "evidence_outside_segment", "no_anchor", "anchor_outside_segment",
           "wrong_evidence_count", "duplicate_question", "no_content", "request_failed")

# "page 12", "pages 20-25", "pages 3, 5 and 9", "p. 4", "pp. 4-6"
_PAGE_ANCHOR = re.compile(r"\b(?:pages?|pp?\.)\s*(\d+(?:\s*(?:-|–|—|to|,|and|&|,\s*and)\s*\d+)*)", re.I)
# "the section 'X'", "Section 3.2", "the chapter “X”"
_SECTION_ANCHOR = re.compile(r"\b(?:section|chapter|appendix|part)\s*(?:\d|[\"'“‘«])", re.I)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def anchor_pages(question: str) -> list[int]:
    """Page numbers the question names ("pages 20-25" -> 20..25; after a singular "page", one number)."""
    pages: list[int] = []
    for match in _PAGE_ANCHOR.finditer(question):
        numbers = re.findall(r"(\d+)\s*(?:(?:-|–|—|to)\s*(\d+))?", match.group(1))
        if not re.match(r"pages|pp", match.group(0), re.I):
            numbers = numbers[:1]  # "on page 12, 2020 revenue": 2020 is no page
        for a, b in numbers:
            lo, hi = int(a), int(b or a)
            pages.extend(range(lo, hi + 1) if 0 < hi - lo < 1000 else [lo, hi])
    return sorted(set(pages))


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def has_section_anchor(question: str, segment: Segment) -> bool:
    q = _norm(question)
    titles = [_norm(t) for t in segment.sections]
    return bool(_SECTION_ANCHOR.search(question)) or any(len(t) >= 4 and t in q for t in titles)


def check_qa(task: str, output: object, segment: Segment) -> dict:
    """A generator's output for a VQA task -> the clean QA dict, or raise :class:`Rejected`."""
    if not isinstance(output, dict):
        raise Rejected("malformed", f"expected a JSON object, got {type(output).__name__}")
    question, answer = output.get("question"), output.get("answer")
    pages = output.get("evidence_pages")
    if not isinstance(question, str) or not question.strip():
        raise Rejected("malformed", "'question' is missing or not a non-empty string")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if isinstance(answer, list) and all(isinstance(a, (str, int, float)) for a in answer):
        answer = "; ".join(str(a) for a in answer)
    if not isinstance(answer, str) and answer is not None:
        raise Rejected("malformed", "'answer' is not a string")
    if not isinstance(pages, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pages):
        raise Rejected("malformed", "'evidence_pages' is not a list of integers")
    if not (answer or "").strip():
        raise Rejected("empty_answer")
    pages = sorted(set(pages))
    outside = [p for p in pages if not segment.first_page <= p <= segment.last_page]
    if outside:
        raise Rejected("evidence_outside_segment",
                       f"pages {outside} not in {segment.first_page}-{segment.last_page}")
    low, high = task_kind(task).evidence_pages
    if len(pages) < low or (high is not None and len(pages) > high):
        raise Rejected("wrong_evidence_count", f"{task} needs {low}{'' if high else '+'} page(s), got {pages}")
    named = anchor_pages(question)
    if not named and not has_section_anchor(question, segment):
        raise Rejected("no_anchor", question[:200])
    stray = [p for p in named if not segment.first_page <= p <= segment.last_page]
    if stray:
        raise Rejected("anchor_outside_segment", f"question names pages {stray}")
    evidence = output.get("evidence")
    return {"question": question.strip(), "answer": answer.strip(), "evidence_pages": pages,
            "evidence": evidence.strip() if isinstance(evidence, str) else ""}


class DuplicateFilter:
    """Rejects a question already accepted for the same document (normalized text)."""

    def __init__(self):
        self._seen: set[tuple[str, str]] = set()

    def check(self, doc_id: str, question: str) -> None:
        key = (doc_id, _norm(question))
        if key in self._seen:
            raise Rejected("duplicate_question", question[:200])
        self._seen.add(key)
