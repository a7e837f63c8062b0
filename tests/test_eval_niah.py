"""NIAH contexts: target lengths within 1% with the real tokenizer and page geometry (32K-512K), the
needle at the requested depth (found independently in the token ids and in the page pixels)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.eval_inputs import PdfPool, expanded_count

from evaluation import niah
from evaluation.config import DEFAULT_LENGTHS, NiahConfig, parse_length
from evaluation.pages import EditedPage
from evaluation.prompt import PromptBuilder
from megatron_vlm.models.registry import get_family

DEPTHS = [0.0, 0.1, 0.5, 0.9, 1.0]
IM_START, IMAGE_PAD, VISION_START = 151644, 151655, 151652


@pytest.fixture(scope="module")
def pool(real_pdfs):
    return PdfPool(real_pdfs, dpi=144)


@pytest.fixture(scope="module")
def requests(pool, qwen_tokenizer, qwen_tokenizer_dir, tmp_path_factory):
    config = NiahConfig(pool="unused", output=str(tmp_path_factory.mktemp("niah")), backend="openai", model="m",
                        tokenizer=str(qwen_tokenizer_dir), depths=DEPTHS, samples=1)
    return niah.requests(config, PromptBuilder(qwen_tokenizer), pool)


def _find(haystack: np.ndarray, needle: list[int]) -> list[int]:
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return np.flatnonzero((windows == np.asarray(needle)).all(axis=1)).tolist()


def _doc_span(ids: np.ndarray, tokenizer, question: str) -> tuple[int, int]:
    """Document tokens: after '<|im_start|>user\\n', before the question (found by token search)."""
    start = int(np.flatnonzero(ids == IM_START)[1]) + 1 + len(tokenizer("user\n")["input_ids"])
    tail = tokenizer(f"{question}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(tail):].tolist() == tail
    return start, len(ids) - len(tail)


def test_lengths_within_one_percent_of_the_targets(requests, pool, qwen_tokenizer):
    lengths = {parse_length(v, "lengths") for v in DEFAULT_LENGTHS}
    assert {r.meta["length"] for r in requests} == lengths == {32768, 65536, 131072, 262144, 524288}
    assert len(requests) == len(lengths) * 2 * len(DEPTHS)
    for r in requests:
        # counted independently: a hand-written user turn through the chat template, pages at their sizes
        content = []
        for k in range(len(r.pages)):
            if k in r.context.lines:
                content.append({"type": "text", "text": r.context.lines[k] + "\n"})
            content += [{"type": "text", "text": f"Page {k + 1}:"}, {"type": "image"}, {"type": "text", "text": "\n"}]
        if len(r.pages) in r.context.lines:
            content.append({"type": "text", "text": r.context.lines[len(r.pages)] + "\n"})
        content.append({"type": "text", "text": r.question})
        sizes = [(p.height, p.width) for p in r.pages]
        count = expanded_count(qwen_tokenizer, content, sizes)
        assert count == r.num_tokens == len(r.expanded_ids())
        assert abs(count - r.meta["length"]) <= 0.01 * r.meta["length"], r.id
        # every page (the cut last one too) has a size Qwen2.5-VL keeps as it is
        assert all(get_family("qwen2_5_vl").geometry.smart_resize(h, w) == (h, w) for h, w in sizes)
    # the haystack is whole pool pages in order, then one partial page
    r = next(r for r in requests if r.meta["length"] == 32768 and r.meta["mode"] == "image")
    assert all(not isinstance(p, EditedPage) or p.needle is not None for p in r.pages[:-1])


def test_text_needle_is_a_line_at_the_requested_depth(requests, qwen_tokenizer):
    for r in (r for r in requests if r.meta["mode"] == "text"):
        ids = r.expanded_ids()
        needle = r.context.lines[r.meta["needle_before_page"] - 1]
        at = _find(ids, qwen_tokenizer(needle, add_special_tokens=False)["input_ids"][:-1])
        assert len(at) == 1, r.id
        start, end = _doc_span(ids, qwen_tokenizer, r.question)
        depth = (at[0] - start) / (end - start)
        assert depth == pytest.approx(r.meta["depth_actual"], abs=2e-5)
        # the needle sits between pages: at the boundary nearest the requested depth
        starts = [i for i in np.flatnonzero(ids == VISION_START)]
        page_share = max(b - a for a, b in zip([start] + starts, starts + [end])) / (end - start)
        assert abs(depth - r.meta["depth"]) <= page_share / 2 + 1e-3, r.id
        assert ids[at[0] - 1] == qwen_tokenizer("\n")["input_ids"][0]  # a line of its own


def test_image_needle_is_drawn_at_the_requested_depth(requests, qwen_tokenizer):
    for r in (r for r in requests if r.meta["mode"] == "image" and r.meta["length"] == 32768):
        k = r.meta["needle_page"] - 1
        page = r.pages[k]
        drawn, plain = page.pixels(), page.base.pixels()[: page.height, : page.width]
        changed = np.flatnonzero((drawn != plain).any(axis=(1, 2)))
        assert len(changed), r.id
        box = drawn[changed[0]: changed[-1] + 1]
        assert (box.min(axis=2) < 100).any() and (box == 255).all(axis=2).mean() > 0.5  # dark text on white
        # every changed pixel lies inside the needle's box, which starts at the recorded row
        top, height = r.meta["needle_row"] * 28, page.needle.height
        assert top <= changed[0] and changed[-1] < top + height and changed[0] - top < height / 2
        ids = r.expanded_ids()
        image_starts = [i for i in np.flatnonzero(ids == IMAGE_PAD) if ids[i - 1] != IMAGE_PAD]
        start, end = _doc_span(ids, qwen_tokenizer, r.question)
        cols = page.width // 28
        depth = (image_starts[k] + changed[0] // 28 * cols - start) / (end - start)  # where the text is
        assert abs(depth - r.meta["depth_actual"]) <= height / 28 * cols / (end - start)
        tolerance = 0.01 if r.meta["depth"] < 1 else 0.06  # at the very end the box must still fit a page
        assert abs(depth - r.meta["depth"]) <= tolerance, r.id
        # the other pages are untouched pool pages
        assert sum(isinstance(p, EditedPage) and p.needle is not None for p in r.pages) == 1


def test_samples_use_other_haystacks_and_needles(pool, qwen_tokenizer, qwen_tokenizer_dir, tmp_path):
    config = NiahConfig(pool="unused", output=str(tmp_path), backend="openai", model="m", samples=2,
                        tokenizer=str(qwen_tokenizer_dir), lengths=["8K"], depths=[0.5], needle_modes=["text"])
    a, b = niah.requests(config, PromptBuilder(qwen_tokenizer), pool)
    assert a.answer != b.answer and a.meta["docs"] != b.meta["docs"]
    again = niah.requests(config, PromptBuilder(qwen_tokenizer), pool)
    assert [r.expanded_ids().tolist() for r in again] == [a.expanded_ids().tolist(), b.expanded_ids().tolist()]


def test_pool_too_small_is_a_clear_error(pool, qwen_tokenizer, qwen_tokenizer_dir, tmp_path):
    from evaluation.config import EvalError

    config = NiahConfig(pool="unused", output=str(tmp_path), backend="openai", model="m",
                        tokenizer=str(qwen_tokenizer_dir), lengths=["2M"], depths=[0.5], needle_modes=["image"])
    with pytest.raises(EvalError, match="cannot make a context of 2097152 tokens within 1%.*the pool has only 515 pages"):
        niah.requests(config, PromptBuilder(qwen_tokenizer), pool)
