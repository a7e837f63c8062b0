"""longvlm synth on a pool built from the real PDFs: segments, offline answers and OCR against PyMuPDF's text."""

from __future__ import annotations

import json
import random
import re
import unicodedata

import pymupdf
import pytest
from helpers.synth_inputs import answer_items

from longvlm import api
from longvlm.cli import main as cli_main
from preprocess.synth.segments import sample_segment

pytestmark = pytest.mark.slow  # builds a pool from the 12 real PDFs (~40 s on 2 cores)

MIN_PAGES, MAX_PAGES = 8, 15


@pytest.fixture(scope="module")
def real_pool(tmp_path_factory, pdf_dir):
    from megatron_vlm.formats.pool import Pool

    out = tmp_path_factory.mktemp("synth_pool") / "pool"
    api.pool(inputs=[str(pdf_dir)], output=str(out), min_pages=0, max_pages=0, dpi=36, progress=False)
    return Pool.open(out)


@pytest.fixture(scope="module")
def pdf_text():
    """PyMuPDF's own text of a page (NFKC, whitespace and unmapped glyphs removed), not via the pool's blocks."""
    cache = {}

    def text(doc: dict, page: int) -> str:
        if doc["doc_id"] not in cache:
            with pymupdf.open(doc["source"]) as pdf:
                flags = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_PRESERVE_LIGATURES | pymupdf.TEXT_MEDIABOX_CLIP
                cache[doc["doc_id"]] = [_squash(p.get_text(flags=flags)) for p in pdf]
        return cache[doc["doc_id"]][page - 1]

    return text


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).replace("\ufffd", "")


def test_segments_on_real_pdfs_respect_sections_and_the_span(real_pool):
    from_sections = 0
    for doc in real_pool.documents:
        short = [s for s in doc["sections"] if s["last_page"] - s["first_page"] + 1 <= MAX_PAGES]
        for seed in range(20):
            seg = sample_segment(doc, random.Random(seed), MIN_PAGES, MAX_PAGES)
            span = seg.last_page - seg.first_page + 1
            if doc["num_pages"] < MIN_PAGES:
                assert (seg.first_page, seg.last_page, seg.source) == (1, doc["num_pages"], "document")
                continue
            assert MIN_PAGES <= span <= MAX_PAGES and 1 <= seg.first_page and seg.last_page <= doc["num_pages"]
            if seg.source != "sections":
                continue
            from_sections += 1
            assert seg.first_page in {s["first_page"] for s in doc["sections"]}
            assert seg.last_page in {s["last_page"] for s in doc["sections"]}
            for s in short:  # no section that fits a segment is cut, beyond a shared boundary page
                overlap = min(s["last_page"], seg.last_page) - max(s["first_page"], seg.first_page) + 1
                inside = seg.first_page <= s["first_page"] and s["last_page"] <= seg.last_page
                assert inside or overlap <= 1, (doc["source"], seg, s)
    assert from_sections >= 3 * 20


def test_offline_answers_are_in_the_pdf_text_of_the_evidence_pages(real_pool, pdf_text, tmp_path):
    result = api.synth(pool=str(real_pool.root), output=str(tmp_path / "t.jsonl"), per_doc=4,
                       tasks="extract-single,extract-multi,reasoning", progress=False)
    records = [json.loads(line) for line in result.output.read_text().splitlines()]
    assert {r["task"] for r in records} == {"extract-single", "extract-multi", "reasoning"}
    assert result.accepted >= len(real_pool) * 4
    for r in records:
        doc = real_pool.get(r["doc_id"])
        for page, text in answer_items(r):
            if " vs " not in r["answer"]:
                assert text not in r["question"]
            assert _squash(text) in pdf_text(doc, page), (doc["source"], r["question"], page, text)


def test_ocr_full_lines_are_the_pdf_text_of_their_pages(real_pool, pdf_text, tmp_path):
    result = api.synth(pool=str(real_pool.root), output=str(tmp_path / "t.jsonl"), tasks="ocr-full,ocr-needle",
                       per_doc=2, progress=False)
    records = [json.loads(line) for line in result.output.read_text().splitlines()]
    assert sum(r["task"] == "ocr-full" for r in records) == len(real_pool)
    checked = 0
    for r in records:
        doc = real_pool.get(r["doc_id"])
        parts = re.split(r"(?:^|\n\n)Page (\d+):\n?", r["answer"])[1:]
        pages = [int(p) for p in parts[::2]]
        assert pages == (list(range(1, doc["num_pages"] + 1)) if r["task"] == "ocr-full" else r["evidence_pages"])
        for page, text in zip(pages, parts[1::2]):
            for line in text.splitlines():
                if "|" not in line:  # table blocks are Markdown
                    assert _squash(line) in pdf_text(doc, page), (doc["source"], page, line)
                    checked += 1
    assert checked > 100


def test_cli_prints_the_summary_table(real_pool, tmp_path, capsys):
    out = tmp_path / "tasks.jsonl"
    assert cli_main(["synth", str(real_pool.root), "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for task in ("extract-single", "extract-multi", "reasoning", "ocr-full", "ocr-needle", "total"):
        assert re.search(rf"^{task}\s+\d+\s+\d+", printed, re.M)
    summary = json.loads((tmp_path / "tasks.summary.json").read_text())["summary"]
    assert sum(t["accepted"] for t in summary.values()) == len(out.read_text().splitlines())
