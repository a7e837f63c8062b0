"""Evaluation prompts, built by the code that builds training samples.

A :class:`Context` is the pages of a document (any :class:`~evaluation.pages.Page`), the number in
each page's ``Page N:`` marker and text lines between pages. :class:`PromptBuilder` renders it with
the question through ``preprocess.dataset.render_sample`` (the tokenizer's own chat template, the
training layout: ``Page N:``, the image, a newline per page, then the question) into a
:class:`Request`: what every backend runs.

A ``Request`` offers each backend the form it needs:

- ``expanded_ids()`` / ``pages``: token ids of the generation prompt (ending ``<|im_start|>assistant\\n``)
  with every image placeholder expanded, and the page images (in-process models);
- ``messages()``: the same prompt as chat messages whose images are data URLs (servers; their
  chat template renders the same text);
- ``pack_item()``: prompt + reference answer as one item of the training loader's dataset
  (``input_ids``, ``targets``, ``cu_seqlens``, ``image_grid_thw``, ``pages``), so that
  ``megatron_vlm.data.micro_batch.micro_batch([...], geometry)`` makes the exact micro-batch a training step
  takes, with ``loss_mask`` on the answer tokens and the closing ``<|im_end|>`` (teacher forcing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from evaluation.pages import Page
from megatron_vlm.models.geometry import ImageGeometry
from megatron_vlm.models.registry import DEFAULT_FAMILY, get_family
from preprocess.dataset.render_sample import IMAGE_PAD_ID, CompactSample, SampleRenderer, chat_messages


@dataclass
class Context:
    pages: list[Page]
    page_numbers: list[int] | None = None  # default 1..N
    lines: dict[int, str] = field(default_factory=dict)  # text line before page i (i == N: after the last)

    def layout(self) -> dict:
        return {"page_numbers": self.page_numbers, "lines": self.lines}

    @property
    def image_tokens(self) -> np.ndarray:
        return np.asarray([p.tokens for p in self.pages], dtype=np.int64)


@dataclass(eq=False)
class Request:
    """One prompt to run; ``meta`` is what the task records about it in the results row."""

    id: str
    question: str
    answer: str | None
    context: Context
    ids: np.ndarray  # compact generation-prompt ids, one <|image_pad|> per page
    builder: PromptBuilder = field(repr=False)
    meta: dict = field(default_factory=dict)

    @property
    def pages(self) -> list[Page]:
        return self.context.pages

    @property
    def num_tokens(self) -> int:
        """Prompt tokens with every image expanded (what the model reads)."""
        return int(len(self.ids) - len(self.pages) + self.context.image_tokens.sum())

    def expanded_ids(self) -> np.ndarray:
        return CompactSample(self.ids, np.zeros(len(self.ids), np.uint8), self.context.image_tokens).expand()[0]

    def messages(self, image_url) -> list[dict]:
        """Chat messages of the prompt; ``image_url(page)`` gives each image's URL (e.g. a data URL)."""
        messages = chat_messages(self.question, None, len(self.pages), self.builder.page_markers,
                                 **self.context.layout())
        pages = iter(self.pages)
        for item in messages[0]["content"]:
            if item["type"] == "image":
                item.clear()
                item.update(type="image_url", image_url={"url": image_url(next(pages))})
        return messages

    def pack_item(self) -> dict:
        """Prompt + reference answer as one training-loader item (see the module docstring)."""
        if self.answer is None:
            raise ValueError(f"example {self.id} has no reference answer to teacher-force")
        return self.builder.pack_item(self)


class PromptBuilder:
    """Renders questions over contexts with a tokenizer and the training sample layout."""

    def __init__(self, tokenizer, page_markers: bool = True, geometry: ImageGeometry | None = None, *,
                 load: Callable[[], object] | None = None):
        """``tokenizer``, or ``load``: a function that loads it when it is first used (so that a task's
        inputs are read and checked before a tokenizer of several seconds is loaded)."""
        self._tokenizer, self._load = tokenizer, load
        self.page_markers = page_markers
        self.geometry = geometry or get_family(DEFAULT_FAMILY).geometry  # the model family's: pages are made at it

    @cached_property
    def tokenizer(self):
        return self._tokenizer if self._load is None else self._load()

    @cached_property
    def renderer(self) -> SampleRenderer:
        return SampleRenderer(self.tokenizer, self.page_markers)

    def has_special_text(self, text: str) -> bool:
        return self.renderer.has_special_text(text)

    def prompt_ids(self, question: str, context: Context) -> np.ndarray:
        return self.renderer.render_prompt(question, len(context.pages), **context.layout())

    def count(self, question: str, context: Context) -> int:
        """Prompt tokens (images expanded) of ``question`` over ``context``."""
        ids = self.prompt_ids(question, context)
        return int(len(ids) - len(context.pages) + context.image_tokens.sum())

    def token_map(self, question: str, context: Context) -> tuple[str, Callable[[int], int]]:
        """The prompt text, and a map from a character offset in it to the index (images expanded) of
        the token that holds that character (the first token ending after it)."""
        text = self.renderer.prompt_text(question, len(context.pages), **context.layout())
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"])
        ends = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)[:, 1]
        extra = np.zeros(len(ids), dtype=np.int64)
        extra[ids == IMAGE_PAD_ID] = context.image_tokens - 1
        before = np.cumsum(extra) - extra  # expansion of the images before each token

        def index(char: int) -> int:
            i = int(np.searchsorted(ends, char, side="right"))
            return i + int(before[i]) if i < len(ids) else int(len(ids) + extra.sum())

        return text, index

    def build(self, id: str, question: str, answer: str | None, context: Context, meta: dict | None = None
              ) -> Request:
        return Request(id, question, answer, context, self.prompt_ids(question, context), self, meta or {})

    def pack_item(self, request: Request) -> dict:
        ctx = request.context
        ids, targets = self.renderer.render_text(request.question, request.answer, len(ctx.pages), **ctx.layout())
        full_ids, full_targets = CompactSample(ids, targets, ctx.image_tokens).expand()
        grids = np.asarray([p.geometry.grid_thw(p.height, p.width) for p in ctx.pages], dtype=np.int64).reshape(-1, 3)
        return {"input_ids": full_ids.astype(np.int64), "targets": full_targets,
                "cu_seqlens": np.asarray([0, len(full_ids)], dtype=np.int32), "image_grid_thw": grids,
                "pages": [p.pixels() for p in ctx.pages]}
