"""One training sample in Qwen2.5-VL's chat format, tokenized with exact token counts.

The text comes from the tokenizer's own chat template (so it is exactly Qwen2.5-VL's ChatML, default
system prompt included); the user turn is the whole document, then the question::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\nPage 1:<|vision_start|><|image_pad|>...<|vision_end|>\\nPage 2:...\\nQUESTION<|im_end|>\\n
    <|im_start|>assistant\\nANSWER<|im_end|>\\n

Every page is ``Page N:`` (``--page-markers``), the image, then a newline. Each image holds exactly
``(h/28)*(w/28)`` ``<|image_pad|>`` tokens. Loss targets: the answer tokens and the closing
``<|im_end|>``. Samples are kept *compact* (one ``<|image_pad|>`` per image) until written, so a
large build never holds expanded 128K-token arrays in memory.

Evaluation (``evaluation/``) renders its prompts with the same code: ``render_prompt`` is the
sample up to ``<|im_start|>assistant\n``, and a context may number its pages otherwise (a
truncated document keeps its page numbers) or hold text lines between pages (a needle).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

IM_END = "<|im_end|>"
IMAGE_PAD = "<|image_pad|>"
IMAGE_PAD_ID = 151655


@dataclass
class CompactSample:
    """Token ids with one ``<|image_pad|>`` per image, and how many tokens each image expands to."""

    ids: np.ndarray            # int32
    targets: np.ndarray        # uint8, 1 = loss target
    image_tokens: np.ndarray   # int64, tokens per image, in context order

    @property
    def num_tokens(self) -> int:
        return int(len(self.ids) - len(self.image_tokens) + self.image_tokens.sum())

    @property
    def target_tokens(self) -> int:
        return int(self.targets.sum())

    def expand(self) -> tuple[np.ndarray, np.ndarray]:
        """The full token ids and target mask (each image placeholder repeated to its token count)."""
        repeats = np.ones(len(self.ids), dtype=np.int64)
        pads = np.flatnonzero(self.ids == IMAGE_PAD_ID)
        repeats[pads] = self.image_tokens
        return np.repeat(self.ids, repeats), np.repeat(self.targets, repeats)


def chat_messages(question: str, answer: str | None, num_pages: int, page_markers: bool, *,
                  page_numbers: Sequence[int] | None = None, lines: Mapping[int, str] | None = None) -> list[dict]:
    """The chat messages of one sample (``answer=None``: the prompt only).

    ``page_numbers``: the number in each page's marker (default ``1..num_pages``); ``lines``: text put
    on a line of its own before page ``i`` (0-based; ``i == num_pages``: after the last page).
    """
    numbers = range(1, num_pages + 1) if page_numbers is None else list(page_numbers)
    if len(numbers) != num_pages:
        raise ValueError(f"{len(numbers)} page numbers for {num_pages} pages")
    lines = lines or {}
    if any(not 0 <= i <= num_pages for i in lines):
        raise ValueError(f"text lines must go before pages 0..{num_pages}, got {sorted(lines)}")
    content: list[dict] = []
    for index, page in enumerate(numbers):
        if index in lines:
            content.append({"type": "text", "text": f"{lines[index]}\n"})
        if page_markers:
            content.append({"type": "text", "text": f"Page {page}:"})
        content.append({"type": "image"})
        content.append({"type": "text", "text": "\n"})
    if num_pages in lines:
        content.append({"type": "text", "text": f"{lines[num_pages]}\n"})
    content.append({"type": "text", "text": question})
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


class SampleRenderer:
    """Renders (question, answer, page count) into compact token ids and a loss-target mask."""

    def __init__(self, tokenizer, page_markers: bool = True):
        self.tokenizer = tokenizer
        self.page_markers = page_markers
        self.image_pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if self.image_pad_id != IMAGE_PAD_ID:
            raise ValueError(f"tokenizer maps {IMAGE_PAD} to {self.image_pad_id}, not Qwen2.5-VL's {IMAGE_PAD_ID}")
        self.special_texts = tuple(tokenizer.all_special_tokens) + tuple(
            str(t) for t in tokenizer.added_tokens_decoder.values())

    def has_special_text(self, text: str) -> bool:
        """Whether ``text`` spells a special token (it would be tokenized as one; such samples are skipped)."""
        return "<|" in text and any(s in text for s in self.special_texts)

    def render_text(self, question: str, answer: str, num_pages: int, **layout) -> tuple[np.ndarray, np.ndarray]:
        """Compact ids (one ``<|image_pad|>`` per page) and targets of one sample (``layout``: the
        ``page_numbers`` / ``lines`` of :func:`chat_messages`)."""
        text = self.tokenizer.apply_chat_template(
            chat_messages(question, answer, num_pages, self.page_markers, **layout), tokenize=False)
        tail = f"<|im_start|>assistant\n{answer}{IM_END}\n"
        if not text.endswith(tail):
            raise ValueError("the tokenizer's chat template does not end with the assistant turn "
                             "'<|im_start|>assistant\\nANSWER<|im_end|>\\n' (not a Qwen2.5-VL template?)")
        target_start = len(text) - len(tail) + len("<|im_start|>assistant\n")
        target_end = len(text) - 1  # the answer and the closing <|im_end|>, not the final newline
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int32)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        targets = ((offsets[:, 1] > target_start) & (offsets[:, 0] < target_end)).astype(np.uint8)
        self._check_pages(ids, num_pages)
        return ids, targets

    def render_conversation(self, messages: list[dict], num_images: int) -> tuple[np.ndarray, np.ndarray]:
        """Compact ids and targets of a multi-turn chat (short-context instruction data): every
        assistant turn's text and its closing ``<|im_end|>`` are targets. ``messages`` are chat
        messages whose content is a string or a list of text / image parts."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        spans, cursor = [], 0
        for message in messages:
            if message["role"] != "assistant":
                continue
            turn = f"<|im_start|>assistant\n{message['content']}{IM_END}"
            at = text.find(turn, cursor)
            if at < 0:
                raise ValueError("the tokenizer's chat template does not render an assistant turn as "
                                 "'<|im_start|>assistant\\nTEXT<|im_end|>' (not a Qwen2.5-VL template?)")
            start = at + len("<|im_start|>assistant\n")
            spans.append((start, at + len(turn)))
            cursor = at + len(turn)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int32)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        targets = np.zeros(len(ids), dtype=np.uint8)
        for start, end in spans:
            targets |= ((offsets[:, 1] > start) & (offsets[:, 0] < end)).astype(np.uint8)
        self._check_pages(ids, num_images)
        return ids, targets

    def prompt_text(self, question: str, num_pages: int, **layout) -> str:
        """The prompt alone as text: the sample up to and including ``<|im_start|>assistant\\n``."""
        text = self.tokenizer.apply_chat_template(
            chat_messages(question, None, num_pages, self.page_markers, **layout), tokenize=False,
            add_generation_prompt=True)
        if not text.endswith("<|im_start|>assistant\n"):
            raise ValueError("the tokenizer's chat template does not end the generation prompt with "
                             "'<|im_start|>assistant\\n' (not a Qwen2.5-VL template?)")
        return text

    def render_prompt(self, question: str, num_pages: int, **layout) -> np.ndarray:
        """Compact ids of ``prompt_text`` (what a model generates from; equal to ``render_text``'s ids
        before the first target)."""
        text = self.prompt_text(question, num_pages, **layout)
        ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)
        self._check_pages(ids, num_pages)
        return ids

    def _check_pages(self, ids: np.ndarray, num_pages: int) -> None:
        found = int((ids == self.image_pad_id).sum())
        if found != num_pages:
            raise ValueError(f"expected {num_pages} image placeholders in the rendered sample, found {found}")
