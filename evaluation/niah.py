"""``longvlm eval niah``: multimodal needle-in-a-haystack inside real documents of a pool.

Per sample ``s``: the haystack is the pool's documents in a seeded order, page after page; the
needle is ``The secret code of the {key} vault is {value}.`` with a seeded key and 7-digit value;
the question asks for the code. Per target length ``L`` (tokens of the whole prompt, measured with
the real tokenizer, chat template and page geometry) and needle mode:

- the context is the first haystack pages that fit, then the top rows of the next page to fill it
  up: the prompt lands within 1% of ``L`` (within one row of page tokens, ~42 at 144 dpi);
- ``image``: the needle is drawn in a white box across a page, at the page and pixel row whose
  tokens sit closest to depth ``d`` of the document tokens;
- ``text``: the needle is a text line of its own between two pages, at the page boundary closest
  to depth ``d``.

Depth ``d`` is the share of the document tokens (the user turn before the question) that come
before the needle; the measured depth is recorded with every example, next to the requested one.
Scoring: 1 when the value appears in the prediction (``exact`` also records a bare answer).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from evaluation.config import EvalError, NiahConfig, parse_length
from evaluation.pages import EditedPage, Needle, Page, PoolPage, needle_box, needle_fits
from evaluation.prompt import Context, PromptBuilder, Request
from evaluation.scoring import needle_exact, needle_score

KEYS = ("amber", "basalt", "cedar", "delta", "ember", "falcon", "garnet", "harbor", "indigo", "juniper",
        "kestrel", "lantern", "meadow", "nickel", "orchid", "pepper", "quartz", "raven", "saffron", "tundra",
        "umber", "violet", "willow", "yarrow", "zephyr", "beacon", "copper", "dune", "fjord", "glacier")
NEEDLE = "The secret code of the {key} vault is {value}."
QUESTION = "What is the secret code of the {key} vault? Answer with the code only."
LENGTH_TOLERANCE = 0.01
USER_TURN = "<|im_start|>user\n"


def needle_of(seed: int, sample: int) -> tuple[str, str]:
    """``(key, value)`` of sample ``sample``."""
    rng = random.Random(f"niah-needle:{seed}:{sample}")
    return rng.choice(KEYS), f"{rng.randrange(10 ** 6, 10 ** 7)}"


class Haystack:
    """The pool's pages in a seeded document order, materialized as far as they are read."""

    def __init__(self, pool, seed: int, sample: int, geometry):
        docs = list(pool.documents)
        random.Random(f"niah-haystack:{seed}:{sample}").shuffle(docs)
        self._iter: Iterator[Page] = (PoolPage.of(pool, d, n, geometry)
                                      for d in docs for n in range(1, d["num_pages"] + 1))
        self.pages: list[Page] = []
        self.total_pages = sum(d["num_pages"] for d in docs)
        self.total_tokens = sum(int(d.get("total_image_tokens", 0)) for d in docs)

    def __getitem__(self, index: int) -> Page | None:
        while len(self.pages) <= index:
            page = next(self._iter, None)
            if page is None:
                return None
            self.pages.append(page)
        return self.pages[index]


def cut_shapes(page: Page, limit: int) -> list[tuple[int, int]]:
    """``(rows, columns)`` of token cells (factor x factor pixels) of the top-left part of ``page`` holding at
    most ``limit`` tokens, largest first (full width preferred); only shapes the model family accepts
    (>= its min_pixels, aspect ratio <= 200)."""
    factor = page.geometry.factor
    rows, cols = page.height // factor, page.width // factor
    least = -(-page.geometry.min_pixels // (factor * factor))
    shapes = [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)
              if least <= r * c <= limit and max(r, c) <= 200 * min(r, c)]
    return sorted(shapes, key=lambda rc: (-rc[0] * rc[1], -rc[1]))


def fit_context(builder: PromptBuilder, question: str, haystack: Haystack, target: int,
                line: str | None = None) -> Context:
    """The first haystack pages, then the top-left part of the next one, whose prompt comes as close
    to ``target`` as it can without exceeding it; ``line`` (a text needle) is counted, after the last page."""

    def count(pages: list[Page]) -> int:
        lines = {len(pages): line} if line is not None else {}
        return builder.count(question, Context(pages, lines=lines))

    budget = target
    pages: list[Page] = []
    total = count(pages)
    overhead = 8  # text tokens a page adds besides its image (marker, vision start/end, newline); refined below
    while (page := haystack[len(pages)]) is not None:
        estimate = total + page.tokens + overhead
        if estimate > budget:
            break
        pages.append(page)
        if budget - estimate < 2 * page.tokens + 64 or len(pages) % 32 == 0:
            exact = count(pages)
            overhead = max(overhead, exact - total - page.tokens)
            total = exact
        else:
            total = estimate
    total = count(pages)
    while pages and total > budget:
        pages.pop()
        total = count(pages)
    page = haystack[len(pages)]
    if page is not None:
        smallest = cut_shapes(page, page.tokens)[-1:]
        if smallest:  # the text a partial page adds: measured with the smallest one
            r, c = smallest[0]
            factor = page.geometry.factor
            text = count(pages + [EditedPage(page, r * factor, c * factor)]) - total - r * c
            for r, c in cut_shapes(page, budget - total - text):
                cut = pages + [EditedPage(page, r * factor, c * factor)]
                if count(cut) <= budget:
                    pages = cut
                    break
    if not pages:
        raise EvalError(f"a context of {target} tokens holds no page: the question alone takes {total} tokens")
    return Context(pages)


def _span(builder: PromptBuilder, question: str, context: Context):
    """The prompt text, its char -> token map, and the document tokens' [start, end)."""
    text, index = builder.token_map(question, context)
    start = index(text.index(USER_TURN) + len(USER_TURN))
    end = index(text.rindex(question))
    return text, index, start, end


def place_text(builder: PromptBuilder, question: str, context: Context, line: str, depth: float
               ) -> tuple[Context, float, int]:
    """``context`` with ``line`` at the page boundary nearest to ``depth``; the measured depth and the
    boundary (the needle comes before page ``boundary``, 0-based)."""
    text, index, start, end = _span(builder, question, context)
    # a boundary before page k starts where page k's marker starts; the last one after the last page
    marker = [index(c) for c in _marker_chars(text, builder.page_markers, len(context.pages))]
    bounds = marker + [end]
    goal = start + depth * (end - start)
    boundary = min(range(len(bounds)), key=lambda k: (abs(bounds[k] - goal), k))
    placed = Context(context.pages, context.page_numbers, {boundary: line})
    text, index, start, end = _span(builder, question, placed)
    at = index(text.index(f"{line}\n"))
    return placed, (at - start) / (end - start), boundary


def _marker_chars(text: str, page_markers: bool, n: int) -> list[int]:
    """Char offset where each page's block (its marker, else its image) starts."""
    out, pos = [], text.index(USER_TURN) + len(USER_TURN)
    for _ in range(n):
        vision = text.index("<|vision_start|>", pos)
        if page_markers:
            vision = text.rindex("Page ", pos, vision)
        out.append(vision)
        pos = text.index("<|vision_end|>", vision) + 1
    return out


def _image_starts(text: str, index, n: int) -> list[int]:
    """Token index (images expanded) of the first image token of each page."""
    out, pos = [], 0
    for _ in range(n):
        pos = text.index("<|image_pad|>", pos)
        out.append(index(pos))
        pos += 1
    return out


def _base(page: Page) -> Page:
    return page.base if isinstance(page, EditedPage) else page


def needle_font_size(page: Page) -> int:
    """Pixels of the needle's font: a text line of the page (1/60 of its full height), at least 12."""
    return max(12, round(_base(page).height / 60))


def place_image(builder: PromptBuilder, question: str, context: Context, needle: str, depth: float
                ) -> tuple[Context, float, int, int]:
    """``context`` with ``needle`` drawn on the page row whose tokens sit nearest to ``depth``; the
    measured depth, the page (0-based) and its row (of factor pixels)."""
    text, index, start, end = _span(builder, question, context)
    starts = _image_starts(text, index, len(context.pages))
    goal = start + depth * (end - start)
    best = None
    for k, (page, first) in enumerate(zip(context.pages, starts)):
        font = needle_font_size(page)
        factor = page.geometry.factor
        _, box = needle_box(needle, page.width, font, factor)
        rows, cols = page.height // factor, page.width // factor
        free = rows - box // factor  # last row the box can start on
        if not needle_fits(needle, page.width, font):
            continue
        if free < 0:
            continue
        row = min(max(round((goal - first) / cols), 0), free)
        distance = abs(first + row * cols - goal)
        if best is None or distance < best[0]:
            best = (distance, k, row, box, font)
    if best is None:
        raise EvalError("no page of the context is tall enough to hold the needle")
    _, k, row, box, font = best
    page = context.pages[k]
    pages = list(context.pages)
    factor = page.geometry.factor
    pages[k] = EditedPage(_base(page), page.height, page.width, Needle(needle, row * factor, box, font))
    placed = Context(pages, context.page_numbers, dict(context.lines))
    at = starts[k] + row * (page.width // factor)
    return placed, (at - start) / (end - start), k, row


def requests(config: NiahConfig, builder: PromptBuilder, pool=None) -> list[Request]:
    """Every (sample, length, mode, depth) example of the run."""
    from megatron_vlm.formats.pool import Pool, PoolFormatError

    if pool is None:
        try:
            pool = Pool.open(config.pool)
        except PoolFormatError as err:
            raise EvalError(f"--pool {config.pool}: {err}") from None
    lengths = [parse_length(v, "lengths") for v in config.lengths]
    out = []
    for sample in range(config.samples):
        key, value = needle_of(config.seed, sample)
        needle, question = NEEDLE.format(key=key, value=value), QUESTION.format(key=key)
        haystack = Haystack(pool, config.seed, sample, builder.geometry)
        for length in lengths:
            for mode in config.needle_modes:
                line = needle if mode == "text" else None
                context = fit_context(builder, question, haystack, length, line)
                for depth in config.depths:
                    if mode == "text":
                        placed, actual, boundary = place_text(builder, question, context, needle, depth)
                        over = builder.count(question, placed) - length
                        if over > 0:  # the line reads a token or two longer here than after the last page
                            smaller = fit_context(builder, question, haystack, length - over, line)
                            placed, actual, boundary = place_text(builder, question, smaller, needle, depth)
                        where = {"needle_before_page": boundary + 1}
                    else:
                        placed, actual, k, row = place_image(builder, question, context, needle, depth)
                        where = {"needle_page": k + 1, "needle_row": row}
                    meta = {"mode": mode, "length": length, "depth": depth, "depth_actual": round(actual, 5),
                            "sample": sample, "key": key, "answer_format": "Needle", "pages": len(placed.pages),
                            "docs": list(dict.fromkeys(p.describe().get("doc_id") for p in placed.pages)), **where}
                    request = builder.build(f"{mode}/L{length}/d{depth:g}/s{sample}", question, value, placed, meta)
                    tokens = request.num_tokens
                    if abs(tokens - length) > LENGTH_TOLERANCE * length:
                        why = (f"the pool has only {haystack.total_pages} pages ({haystack.total_tokens} tokens): add "
                               "documents or lower --lengths" if len(placed.pages) >= haystack.total_pages else
                               "the pages' 28-pixel cells are too coarse to come closer at this length: use a pool "
                               "rendered at a higher dpi or another length")
                        raise EvalError(f"cannot make a context of {length} tokens within "
                                        f"{LENGTH_TOLERANCE:.0%} (closest: {tokens}); {why}")
                    out.append(request)
    return out


def score(request: Request, output: dict) -> dict:
    """The row fields of one finished example."""
    if "prediction" not in output:
        return {}
    prediction = output["prediction"]
    return {"score": needle_score(request.answer, prediction), "exact": needle_exact(request.answer, prediction)}


def metric(row: dict) -> float:
    """The number a row contributes to the grid: its score, or its answer token accuracy (teacher forcing)."""
    return float(row["score"]) if "score" in row else float(row["answer_token_accuracy"])


def summarize(rows: list[dict], config: NiahConfig) -> dict:
    """Mean score per mode x length x depth, per mode x length and per mode."""
    cells: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        value = metric(row)
        cells[row["mode"], row["length"], row["depth"]].append(value)
        cells[row["mode"], row["length"], None].append(value)
        cells[row["mode"], None, None].append(value)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    lengths = [parse_length(v, "lengths") for v in config.lengths]
    grid = {mode: {str(length): {f"{d:g}": mean(cells[mode, length, d]) for d in config.depths}
                   for length in lengths} for mode in config.needle_modes}
    return {
        "metric": "score" if config.scoring == "generate" else "answer_token_accuracy",
        "n": len(rows),
        "overall": mean([metric(r) for r in rows]),
        "by_mode": {mode: mean(cells[mode, None, None]) for mode in config.needle_modes},
        "by_length": {mode: {str(length): mean(cells[mode, length, None]) for length in lengths}
                      for mode in config.needle_modes},
        "grid": grid,
        "max_depth_error": max((abs(r["depth_actual"] - r["depth"]) for r in rows), default=None),
        "max_length_error": max((abs(r["prompt_tokens"] - r["length"]) / r["length"] for r in rows), default=None),
    }


def _label(length: int) -> str:
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def report(summary: dict) -> str:
    """The grid as text tables, one per needle mode."""
    lines = []
    for mode, grid in summary["grid"].items():
        depths = list(next(iter(grid.values())))
        lines.append(f"needle: {mode} ({summary['metric']}; rows: context length, columns: depth)")
        lines.append(f"{'length':>8}" + "".join(f"{d:>7}" for d in depths) + f"{'mean':>8}")
        for length, row in grid.items():
            cells = "".join(f"{'-' if v is None else f'{v:.2f}':>7}" for v in row.values())
            total = summary["by_length"][mode][length]
            lines.append(f"{_label(int(length)):>8}{cells}{'-' if total is None else f'{total:.2f}':>8}")
        lines.append("")
    overall = summary["overall"]
    lines.append(f"overall {summary['metric']}: {'-' if overall is None else f'{overall:.3f}'} over {summary['n']} "
                 f"examples; max |depth - requested| {summary['max_depth_error'] or 0:.3f}, max length error "
                 f"{(summary['max_length_error'] or 0):.2%}")
    return "\n".join(lines)


def artifacts(summary: dict, directory: Path) -> list[Path]:
    from evaluation.heatmap import plot_grid

    path = directory / "heatmap.png"
    plot_grid(summary["grid"], summary["metric"], path)
    return [path]


def inputs(config: NiahConfig) -> dict:
    from megatron_vlm.formats.pool import pool_fingerprint

    return {"pool": {"path": str(Path(config.pool).absolute()), "fingerprint": pool_fingerprint(config.pool)}}
