"""Layout blocks, labels, sections and page encodings of the document pool.

The generated PDF's structure is known by construction; the real outline-less manuals are
checked against their printed section numbering; PNGs are decoded by Pillow, not by our writer.
"""

from __future__ import annotations

import io

import numpy as np
import pymupdf
import pytest
from PIL import Image

from preprocess.pool.config import PoolConfig
from preprocess.pool.document import process_document
from preprocess.pool.encode import encode_page, is_gray, png_bytes, psnr
from preprocess.pool.layout import LABELS, label_document, page_blocks
from preprocess.pool.sections import document_sections

PARAGRAPH = ("Long documents combine text, tables and figures over many pages. " * 6).strip()


def make_structured_pdf(path):
    """Three pages: running headers (fixed and by section), page numbers, a title, numbered headers, paragraphs, a list,
    code, a formula, a caption and a ruled table; no outline."""
    doc = pymupdf.open()
    for n in range(1, 4):
        page = doc.new_page(width=595, height=842)
        page.insert_text((72, 40), "ACME Technical Report", fontsize=8)
        page.insert_text((72, 832), ["Introduction", "Methods", "Results"][n - 1], fontsize=7)  # running
        page.insert_text((290, 815), f"{n}", fontsize=9)
        y = 90
        if n == 1:
            page.insert_text((72, y), "Annual Widget Report", fontsize=24, fontname="hebo")
            y += 50
        heads = {1: [("1 Introduction", 16)], 2: [("2 Methods", 16), ("2.1 Data", 13)], 3: [("3 Results", 16)]}
        for title, size in heads[n]:
            page.insert_text((72, y), title, fontsize=size, fontname="hebo")
            y += 30
            page.insert_textbox(pymupdf.Rect(72, y, 523, y + 90), PARAGRAPH, fontsize=10)
            y += 110
        if n == 1:
            page.insert_textbox(pymupdf.Rect(72, y, 523, y + 40),
                                "- first point of the list\n- second point of the list", fontsize=10)
            y += 60
            page.insert_textbox(pymupdf.Rect(72, y, 523, y + 40), "def widget(x):\n    return x + 1",
                                fontsize=10, fontname="cour")
            y += 60
            page.insert_text((200, y), "E = m c^2 + (a + b)^2", fontsize=10)
        if n == 3:
            page.insert_text((72, y), "Table 1: Widget counts per region.", fontsize=10)
            y += 20
            rows = [("Region", "Widgets", "Share"), ("North", "120", "40%"), ("South", "180", "60%")]
            for i, row in enumerate(rows):
                page.draw_line((72, y + 20 * i), (372, y + 20 * i), width=0.8)
                for j, cell in enumerate(row):
                    page.insert_text((77 + 100 * j, y + 20 * i + 14), cell, fontsize=10)
            page.draw_line((72, y + 60), (372, y + 60), width=0.8)
            for j in range(4):
                page.draw_line((72 + 100 * j, y), (72 + 100 * j, y + 60), width=0.8)
    doc.save(path)
    return path


def labelled(path):
    doc = pymupdf.open(path)
    raw = [page_blocks(page)[0] for page in doc]
    return doc, label_document(raw, [page.rect.height for page in doc])


def test_labels_of_a_generated_document(tmp_path):
    doc, pages = labelled(make_structured_pdf(tmp_path / "s.pdf"))
    by_text = {b["text"].split("\n")[0]: b["label"] for blocks in pages for b in blocks}
    assert by_text["ACME Technical Report"] == "header_footer"
    assert by_text["Introduction"] == by_text["Methods"] == by_text["Results"] == "header_footer"
    assert by_text["1"] == by_text["2"] == by_text["3"] == "header_footer"
    assert by_text["Annual Widget Report"] == "title"
    assert by_text["1 Introduction"] == by_text["2.1 Data"] == by_text["3 Results"] == "section_header"
    assert by_text["- first point of the list"] == "list"
    assert by_text["def widget(x):"] == "code"
    assert by_text["E = m c^2 + (a + b)^2"] == "formula"
    assert by_text["Table 1: Widget counts per region."] == "caption"
    (table,) = [b for b in pages[2] if b["label"] == "table"]
    assert "|North|120|40%|" in table["text"]
    assert not any("North" in b["text"] for b in pages[2] if b["label"] != "table")  # replaced, not doubled
    assert {b["label"] for blocks in pages for b in blocks} <= set(LABELS)
    assert all(b["label"] == "paragraph" for blocks in pages for b in blocks if b["text"].startswith("Long"))
    for blocks in pages:
        for b in blocks:
            assert set(b) == {"bbox", "text", "font_size", "bold", "label"}
    assert [b["bbox"][1] for b in pages[1]] == sorted(b["bbox"][1] for b in pages[1])  # reading order


def test_sections_of_a_generated_document_without_outline(tmp_path):
    doc, pages = labelled(make_structured_pdf(tmp_path / "s.pdf"))
    sections = document_sections(doc, pages)
    assert [(s["title"], s["level"], s["first_page"], s["last_page"], s["source"]) for s in sections] == [
        ("1 Introduction", 1, 1, 1, "layout"),  # "2 Methods" opens page 2: section 1 ends on page 1
        ("2 Methods", 1, 2, 2, "layout"),
        ("2.1 Data", 2, 2, 2, "layout"),
        ("3 Results", 1, 3, 3, "layout"),
    ]


EXPECTED_NUMBERED = {  # printed top-level sections of the outline-less manuals
    "booktabs.pdf": ["1 Introduction", "2 The layout of formal tables", "3 Use of the new commands",
                     "4 Abuse of the new commands", "9 The code"],
    "float.pdf": ["1 Introduction", "2 The User Interface — New Floats", "4 Implementation",
                  "5 The Float Styles"],
    "camlidl-1.04.doc.pdf": ["1 Overview", "2 IDL syntax", "3 The Caml-IDL mapping", "4 Using camlidl",
                             "7 Release notes"],
    "seminar-doc.pdf": ["1 Landscape and portrait slides", "13 Notes", "22 Converting SLiTEX files"],
}
FIRST_SECTION = {"booktabs.pdf": "1 Introduction", "float.pdf": "1 Introduction",  # not the front matter
                 "camlidl-1.04.doc.pdf": "1 Overview", "seminar-doc.pdf": "Contents"}


@pytest.mark.parametrize("name", sorted(EXPECTED_NUMBERED))
def test_sections_found_on_outline_less_pdfs(pdf_dir, name):
    doc, pages = labelled(pdf_dir / name)
    assert doc.get_toc() == []
    sections = document_sections(doc, pages)
    titles = [s["title"] for s in sections]
    assert titles[0] == FIRST_SECTION[name]
    for title in EXPECTED_NUMBERED[name]:
        assert title in titles
        (s,) = [s for s in sections if s["title"] == title]
        assert s["level"] == 1 and s["source"] == "layout"
    firsts = [s["first_page"] for s in sections]
    assert firsts == sorted(firsts)
    assert all(1 <= s["first_page"] <= s["last_page"] <= doc.page_count for s in sections)
    level1 = [s for s in sections if s["level"] == 1]
    for a, b in zip(level1, level1[1:]):  # a top-level section runs up to the next one
        assert b["first_page"] - 1 <= a["last_page"] <= b["first_page"]
    assert "Timothy Van Zandt" not in titles and len(sections) < 4 * doc.page_count


def test_sections_from_the_outline_when_there_is_one(pdf_dir):
    doc, pages = labelled(pdf_dir / "mathtools.pdf")
    sections = document_sections(doc, pages)
    toc = [(lvl, " ".join(t.split()), p) for lvl, t, p in doc.get_toc()]
    assert [(s["level"], s["title"], s["first_page"]) for s in sections] == toc
    assert {s["source"] for s in sections} == {"outline"}
    assert all(s["first_page"] <= s["last_page"] for s in sections)


def test_scanned_page_is_flagged(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=400)
    scan = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 60), dtype=np.uint8))
    buf = io.BytesIO()
    scan.save(buf, format="PNG")
    page.insert_image(page.rect, stream=buf.getvalue())
    text_page = doc.new_page(width=300, height=400)
    text_page.insert_text((20, 50), "Some text layer", fontsize=10)
    doc.save(tmp_path / "scan.pdf")
    result = process_document(str(tmp_path / "scan.pdf"), "x",
                              PoolConfig(inputs=[], output="x", dpi=36, min_pages=0))
    scanned, text = result.entry["pages"]
    assert (scanned["has_text"], scanned["scanned"]) == (False, True)
    assert (text["has_text"], text["scanned"]) == (True, False)
    assert result.entry["scanned_pages"] == 1


@pytest.mark.parametrize("shape", [(37, 29), (40, 56, 3)])
def test_png_writer_is_read_back_exactly_by_pillow(shape):
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    img = Image.open(io.BytesIO(png_bytes(pixels)))
    assert img.mode == ("L" if len(shape) == 2 else "RGB")
    np.testing.assert_array_equal(np.asarray(img), pixels)


def test_encodings_lossless_png_and_jpeg_for_photos(pdf_dir):
    page = pymupdf.open(pdf_dir / "caption.pdf")[3]  # black text with coloured links
    pix = page.get_pixmap(dpi=72, alpha=False)
    rgb = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, 3)
    gray = np.repeat(rgb[..., :1], 3, axis=2)
    assert not is_gray(rgb) and is_gray(gray)

    def decoded(data):
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    data, fmt = encode_page(gray, "auto", 92)
    assert fmt == "png" and Image.open(io.BytesIO(data)).mode == "L"
    np.testing.assert_array_equal(decoded(data), gray)
    data, fmt = encode_page(rgb, "auto", 92)
    assert fmt == "png" and Image.open(io.BytesIO(data)).mode == "RGB"
    np.testing.assert_array_equal(decoded(data), rgb)
    data, fmt = encode_page(rgb, "jpeg", 92)
    assert fmt == "jpeg" and psnr(decoded(data), rgb) >= 40
    yy, xx = np.mgrid[0:300, 0:200]  # a smooth "photo" with a little noise: PNG is large
    noise = np.random.default_rng(0).integers(0, 3, (300, 200, 3))
    photo = ((np.stack([xx, yy, xx + yy], axis=2) + noise) % 256).astype(np.uint8)
    data, fmt = encode_page(photo, "auto", 92, min_psnr=40)
    assert fmt == "jpeg" and psnr(decoded(data), photo) >= 40
    data, fmt = encode_page(photo, "auto", 92, min_psnr=60)  # quality not reached: stays lossless
    assert fmt == "png"
    np.testing.assert_array_equal(decoded(data), photo)


def test_psnr_matches_a_hand_computation():
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 12  # MSE = 144 / 12 = 12
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / 12))
    assert psnr(a, a) == float("inf")
