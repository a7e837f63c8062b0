"""Layout-aware blocks from a page's text layer, labelled from font statistics.

Per page, PyMuPDF's text blocks (content-stream order, which is the reading order of typeset
documents) are split where the font size or weight changes between lines, so a heading never
shares a block with the paragraph under it. Ruled tables found by PyMuPDF's table finder replace
the text blocks they cover. Labels are then assigned per document, against the body font size
(the most common size, by characters):

- ``header_footer``: in the top or bottom margin and repeated (digits ignored) on several pages,
  or a bare page number there;
- ``table``: PyMuPDF ``find_tables`` (text as Markdown), run on pages with >= 3 aligned rules;
- ``caption``: starts with Figure/Fig./Table/Listing/Algorithm + number;
- ``title``: the largest text on the first page, clearly above body size;
- ``section_header``: short (<= 3 lines), larger than body text, or bold/numbered at body size;
- ``code``: mostly monospaced; ``formula``: mostly math fonts/symbols;
- ``list``: lines starting with bullets or enumerators; otherwise ``paragraph``.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pymupdf

LABELS = ("title", "section_header", "paragraph", "list", "table", "caption", "header_footer",
          "formula", "code")
TEXT_FLAGS = (pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_PRESERVE_LIGATURES
              | pymupdf.TEXT_MEDIABOX_CLIP)
MARGIN = 0.09  # top/bottom fraction of the page where running headers and footers live
_MONO = re.compile(r"mono|courier|typewriter|consol|menlo|^cmtt|^sfmono|inconsolata|^lmtt|code", re.I)
_MATH = re.compile(r"^(cmmi|cmsy|cmex|msam|msbm|eufm|rsfs|stmary|cmbsy|lmmath)|math|symbol", re.I)
_BOLD_NAME = re.compile(r"bold|black|heavy|semibold|demi|-medi|^cmbx|^cmb\d|^lmbx", re.I)
_CAPTION = re.compile(r"^(figure|fig\.|table|tab\.|listing|algorithm|abbildung|tableau|tabelle)\s*"
                      r"[\dIVXivx]+[.:\s]", re.I)
_BULLET = re.compile(r"^\s*([•◦▪▫●○■□‣⁃∙·–—\-*]|\(?[0-9]{1,2}[.)]|\(?[a-zA-Z][.)]|\(?[ivx]{1,4}[.)])\s+\S")
_NUMBERED = re.compile(r"^((\d+|[A-Z])(\.\d+)*\.?|[IVX]+\.)\s+\S")
_PAGE_NUMBER = re.compile(r"^\s*(page\s*)?(\d+|[ivxlc]+)(\s*(/|of)\s*\d+)?\s*$", re.I)
_MATH_CHARS = set("=+−×÷∑∏∫√∞≤≥≠≈∈∉⊂⊆∪∩∀∃∂∇αβγδεζηθλμπρστφχψωΓΔΘΛΠΣΦΨΩ^_{}()[]|")


def _span_bold(span: dict) -> bool:
    return bool(span["flags"] & pymupdf.TEXT_FONT_BOLD) or bool(_BOLD_NAME.search(span["font"]))


def _line_stats(line: dict) -> dict:
    sizes: Counter = Counter()
    bold = mono = math = chars = 0
    for span in line["spans"]:
        n = len(span["text"].strip())
        if not n:
            continue
        chars += n
        sizes[round(span["size"] * 2) / 2] += n
        bold += n * _span_bold(span)
        mono += n * (bool(span["flags"] & pymupdf.TEXT_FONT_MONOSPACED) or bool(_MONO.search(span["font"])))
        math += n * bool(_MATH.search(span["font"]))
    text = "".join(s["text"] for s in line["spans"])
    return {"text": text, "chars": chars, "size": sizes.most_common(1)[0][0] if sizes else 0.0,
            "bold": bold, "mono": mono, "math": math, "bbox": line["bbox"]}


def _make_block(lines: list[dict]) -> dict:
    chars = sum(ln["chars"] for ln in lines) or 1
    sizes: Counter = Counter()
    for ln in lines:
        sizes[ln["size"]] += ln["chars"]
    x0 = min(ln["bbox"][0] for ln in lines)
    y0 = min(ln["bbox"][1] for ln in lines)
    x1 = max(ln["bbox"][2] for ln in lines)
    y1 = max(ln["bbox"][3] for ln in lines)
    return {
        "bbox": [round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)],
        "text": "\n".join(ln["text"].rstrip() for ln in lines),
        "font_size": sizes.most_common(1)[0][0],
        "bold": sum(ln["bold"] for ln in lines) * 2 > chars,
        "_chars": chars,
        "_lines": len(lines),
        "_mono": sum(ln["mono"] for ln in lines) / chars,
        "_math": sum(ln["math"] for ln in lines) / chars,
        "_first_line": lines[0]["text"],
    }


def _split_lines(lines: list[dict]) -> list[list[dict]]:
    """Split a PyMuPDF block where the font size or boldness changes from one line to the next."""
    groups: list[list[dict]] = []
    for ln in lines:
        if groups:
            prev = groups[-1][-1]
            same_size = abs(ln["size"] - prev["size"]) <= 0.1 * max(ln["size"], prev["size"])
            same_weight = (ln["bold"] * 2 > ln["chars"]) == (prev["bold"] * 2 > prev["chars"])
            if same_size and (same_weight or len(groups[-1]) > 1 and not prev["bold"]):
                groups[-1].append(ln)
                continue
        groups.append([ln])
    return groups


def _rules(page: pymupdf.Page) -> list[tuple[float, float, float]]:
    """Horizontal rules (x0, y, x1) drawn on the page: lines and thin filled rectangles."""
    out = []
    for path in page.get_cdrawings():
        for item in path["items"]:
            if item[0] == "l":
                (ax, ay), (bx, by) = item[1], item[2]
                if abs(ay - by) < 1 and abs(ax - bx) > 20:
                    out.append((min(ax, bx), ay, max(ax, bx)))
            elif item[0] == "re":
                r = pymupdf.Rect(item[1])
                if r.height < 3 and r.width > 20:
                    out.append((r.x0, r.y0, r.x1))
    return out


def _table_regions(page: pymupdf.Page) -> list[pymupdf.Rect]:
    """Regions with >= 3 horizontal rules of about the same extent: where a ruled table may be."""
    groups: list[dict] = []
    for x0, y, x1 in sorted(_rules(page), key=lambda r: r[1]):
        for g in groups:
            overlap = min(x1, g["x1"]) - max(x0, g["x0"])
            if overlap > 0.8 * max(x1 - x0, g["x1"] - g["x0"]) and y - g["y1"] < 300:
                if y - g["y1"] > 1:
                    g["n"] += 1
                    g["y1"] = y
                break
        else:
            groups.append({"x0": x0, "x1": x1, "y0": y, "y1": y, "n": 1})
    return [pymupdf.Rect(g["x0"] - 2, g["y0"] - 2, g["x1"] + 2, g["y1"] + 2) for g in groups if g["n"] >= 3]


def _tables(page: pymupdf.Page) -> list[dict]:
    found = []
    for region in _table_regions(page):
        for table in page.find_tables(clip=region).tables:
            if table.row_count >= 2 and table.col_count >= 2:
                found.append({"bbox": [round(v, 2) for v in table.bbox], "text": table.to_markdown().strip()})
    return found


def _inside(inner: list[float], outer: list[float]) -> bool:
    x0, y0, x1, y1 = inner
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def page_blocks(page: pymupdf.Page, tables: bool = True) -> tuple[list[dict], bool]:
    """Unlabelled blocks of one page in reading order, and whether the page has a text layer."""
    data = page.get_text("dict", flags=TEXT_FLAGS)
    blocks = []
    for raw in data["blocks"]:
        if raw.get("type") != 0:
            continue
        lines = [_line_stats(ln) for ln in raw["lines"]]
        lines = [ln for ln in lines if ln["chars"]]
        blocks.extend(_make_block(group) for group in _split_lines(lines) if group)
    has_text = bool(blocks)
    if tables and has_text:
        for table in _tables(page):
            covered = [i for i, b in enumerate(blocks) if _inside(b["bbox"], table["bbox"])]
            if not covered:
                continue
            block = {"bbox": table["bbox"], "text": table["text"], "font_size": blocks[covered[0]]["font_size"],
                     "bold": False, "_chars": len(table["text"]), "_lines": table["text"].count("\n") + 1,
                     "_mono": 0.0, "_math": 0.0, "_first_line": "", "_table": True}
            keep = [b for i, b in enumerate(blocks) if i not in set(covered)]
            keep.insert(covered[0], block)
            blocks = keep
    return blocks, has_text


def body_font_size(pages: list[list[dict]]) -> float:
    """The most common font size in the document, weighted by characters."""
    sizes: Counter = Counter()
    for blocks in pages:
        for b in blocks:
            sizes[b["font_size"]] += b["_chars"]
    return sizes.most_common(1)[0][0] if sizes else 10.0


def _margin_key(block: dict, page_height: float) -> str | None:
    """A digit-free key for blocks in the top/bottom margin (None for blocks elsewhere)."""
    y0, y1 = block["bbox"][1], block["bbox"][3]
    if y1 <= page_height * MARGIN or y0 >= page_height * (1 - MARGIN):
        return re.sub(r"\d+", "#", " ".join(block["text"].lower().split()))
    return None


def _is_header(block: dict, body: float) -> bool:
    text = block["text"].strip()
    if block["_lines"] > 3 or not 2 <= len(text) <= 200 or not re.search(r"[^\W\d_]", text):
        return False
    if text.endswith((",", ";")) or block["_mono"] > 0.5:
        return False
    if block["font_size"] >= body * 1.15:
        return True
    at_body = block["font_size"] >= body * 0.95
    return at_body and block["bold"] and block["_lines"] == 1 and len(text) <= 100 and (
        bool(_NUMBERED.match(text)) or not text.endswith("."))


def _content_label(block: dict) -> str:
    if _CAPTION.match(block["text"].lstrip()):
        return "caption"
    if block["_mono"] >= 0.6:
        return "code"
    text = block["text"]
    symbols = sum(c in _MATH_CHARS for c in text) / max(1, len(text.replace(" ", "")))
    if block["_math"] >= 0.4 or (symbols >= 0.25 and len(text) >= 3):
        return "formula"
    lines = text.split("\n")
    if sum(bool(_BULLET.match(ln)) for ln in lines) >= max(1, len(lines) // 3) and _BULLET.match(lines[0]):
        return "list"
    return "paragraph"


def label_document(pages: list[list[dict]], page_heights: list[float]) -> list[list[dict]]:
    """Label every block of a document; returns the public blocks (bbox, text, font_size, bold, label)."""
    body = body_font_size(pages)
    key_pages: dict[str, set[int]] = defaultdict(set)
    for i, blocks in enumerate(pages):
        for b in blocks:
            key = _margin_key(b, page_heights[i])
            if key is not None:
                key_pages[key].add(i)
    repeat = max(2, min(3, len(pages) // 4))
    title_size = max((b["font_size"] for b in pages[0]), default=0.0) if pages else 0.0
    title_done = False
    out = []
    for i, blocks in enumerate(pages):
        labelled = []
        for b in blocks:
            key = _margin_key(b, page_heights[i])
            if b.get("_table"):
                label = "table"
            elif key is not None and (len(key_pages[key]) >= repeat or _PAGE_NUMBER.match(b["text"])):
                label = "header_footer"
            elif (i == 0 and not title_done and b["font_size"] == title_size
                  and title_size >= body * 1.4 and b["_lines"] <= 4):
                label = "title"
            elif _CAPTION.match(b["text"].lstrip()):
                label = "caption"
            elif _is_header(b, body):
                label = "section_header"
            else:
                label = _content_label(b)
            if i == 0 and label != "title" and labelled and labelled[-1]["label"] == "title":
                title_done = True
            labelled.append({"bbox": b["bbox"], "text": b["text"], "font_size": b["font_size"],
                             "bold": b["bold"], "label": label})
        out.append(labelled)
    return out
