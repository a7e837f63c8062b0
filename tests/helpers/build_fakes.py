"""A small in-memory stand-in for ``preprocess.pool.Pool`` and a tasks-file writer (build/loader tests)."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


class FakePool:
    """Documents with pages of given pixel sizes (multiples of 28); page images are seeded noise PNGs.

    Also writes ``manifest.jsonl`` to ``pool_dir`` so the pool fingerprint is real.
    """

    encoding = "png"
    family = "qwen2_5_vl"  # pages at Qwen2.5-VL's geometry (28-pixel multiples), its default pixel bounds
    pixel_bounds = (3136, 12845056)

    def __init__(self, pool_dir: Path, page_sizes: dict[str, list[tuple[int, int]]]):
        self.pool_dir = Path(pool_dir)
        self.documents, start = [], 0
        for doc_id, sizes in page_sizes.items():
            pages = [{"width": w, "height": h, "grid": [h // 14, w // 14], "tokens": h * w // 784,
                      "has_text": True} for h, w in sizes]
            self.documents.append({"doc_id": doc_id, "source": f"{doc_id}.pdf", "num_pages": len(pages),
                                   "page_start": start, "pages": pages, "sections": [],
                                   "total_image_tokens": sum(p["tokens"] for p in pages)})
            start += len(pages)
        self.pool_dir.mkdir(parents=True, exist_ok=True)
        self._by_id = {d["doc_id"]: d for d in self.documents}
        for d in self.documents:  # the manifest's encoded size of each page
            for n, page in enumerate(d["pages"], start=1):
                page["bytes"] = len(self.page_bytes(d["doc_id"], n))
        with open(self.pool_dir / "manifest.jsonl", "w") as f:
            for d in self.documents:
                f.write(json.dumps(d) + "\n")

    @classmethod
    def open(cls, pool_dir):  # the loader opens pools by path; tests register instances here
        return OPEN_POOLS[str(Path(pool_dir).absolute())]

    def register(self) -> FakePool:
        OPEN_POOLS[str(self.pool_dir.absolute())] = self
        return self

    def get(self, doc_id):
        return self._by_id[doc_id]

    def page_image(self, doc_id, page_number):
        page = self._by_id[doc_id]["pages"][page_number - 1]
        seed = zlib.crc32(f"{doc_id}:{page_number}".encode())
        pixels = np.random.default_rng(seed).integers(0, 256, (page["height"], page["width"], 3), dtype=np.uint8)
        return Image.fromarray(pixels, "RGB")

    def page_bytes(self, doc_id, page_number):
        buf = io.BytesIO()
        self.page_image(doc_id, page_number).save(buf, format="PNG")
        return buf.getvalue()


OPEN_POOLS: dict[str, FakePool] = {}


def write_tasks(path: Path, rows: list[dict]) -> Path:
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            full = {"id": f"t{i}", "evidence_pages": [1], "segment": None,
                    "generator": {"name": "offline", "model": None, "prompt_version": "test"}, **row}
            f.write(json.dumps(full) + "\n")
    return path
