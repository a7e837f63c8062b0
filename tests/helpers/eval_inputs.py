"""Helpers of the evaluation tests: a pool over real PDFs at any dpi without building one."""

from __future__ import annotations

from pathlib import Path

from evaluation.pages import PdfPage, encode_png


class PdfPool:
    """The ``Pool`` reading interface over real PDFs: the manifest holds the pages' real Qwen2.5-VL
    sizes at ``dpi`` (the pool's own geometry code), pages are rendered only when read."""

    encoding = "png"
    family = "qwen2_5_vl"
    pixel_bounds = (3136, 12845056)

    def __init__(self, pdfs: list[Path], dpi: int = 144):
        from megatron_vlm.models.registry import get_family

        self.documents, self._pages = [], {}
        for i, path in enumerate(pdfs):
            pages = PdfPage.document(path, dpi, get_family(self.family).geometry, *self.pixel_bounds)
            doc_id = f"{i:064x}"
            self.documents.append({
                "doc_id": doc_id, "source": str(path), "num_pages": len(pages),
                "total_image_tokens": sum(p.tokens for p in pages),
                "pages": [{"height": p.height, "width": p.width, "tokens": p.tokens,
                           "grid": [p.height // 14, p.width // 14]} for p in pages]})
            self._pages[doc_id] = pages

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._pages

    def get(self, doc_id: str) -> dict:
        return next(d for d in self.documents if d["doc_id"] == doc_id)

    def page_bytes(self, doc_id: str, page_number: int) -> bytes:
        return encode_png(self._pages[doc_id][page_number - 1].pixels())


def expanded_count(tokenizer, content: list[dict], sizes: list[tuple[int, int]]) -> int:
    """Prompt tokens of a user turn written by hand: the chat template's text, each image placeholder
    counted as (h/28)*(w/28) tokens (an independent count of what ``Request.num_tokens`` says)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) - len(sizes) + sum((h // 28) * (w // 28) for h, w in sizes)
