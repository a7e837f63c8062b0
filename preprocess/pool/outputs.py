"""What a pool run writes last and reports: the manifest, the rejections, ``pool.json``, the summary."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from megatron_vlm import __version__
from megatron_vlm.errors import LongVLMError
from megatron_vlm.formats.pool import FORMAT_VERSION
from megatron_vlm.utils.atomic import atomic_write, write_json
from preprocess.pool.chunk import rejection


class PoolError(LongVLMError, RuntimeError):
    """An expected failure (bad option, input or pool directory), reported without a traceback."""


@dataclass
class PoolSummary:
    output: Path
    inputs: int
    accepted: int
    rejected: int
    pages: int
    image_tokens: int
    reasons: dict
    seconds: float
    already_complete: bool = False

    def __str__(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())) or "none"
        state = " (already complete, nothing to do)" if self.already_complete else ""
        return (f"pool {self.output}{state}: {self.inputs} inputs -> {self.accepted} documents, "
                f"{self.pages} pages, {self.image_tokens:,} image tokens; rejected {self.rejected} ({why}); "
                f"{self.seconds:.1f} s")


def duplicate(item: dict, first_source: str) -> dict:
    return rejection(item, "duplicate", f"same bytes as {first_source}", duplicate_of=first_source)


MANIFEST_ORDER = ("doc_id", "source", "input_index", "num_pages", "page_start", "total_image_tokens",
                  "title", "scanned_pages", "sections", "pages")


def write_pool_files(out: Path, entries: list[dict], rejected: list[dict], settings: dict,
                     encoding: str, merged_from: list[str] | None = None) -> dict:
    """manifest.jsonl, rejected.jsonl, then pool.json (the completion marker)."""
    with atomic_write(out / "manifest.jsonl") as f:
        for entry in entries:
            ordered = {k: entry[k] for k in MANIFEST_ORDER if k in entry}
            f.write(json.dumps(ordered, ensure_ascii=False) + "\n")
    with atomic_write(out / "rejected.jsonl") as f:
        for r in rejected:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    pages = [p for e in entries for p in e["pages"]]
    info = {
        "format_version": FORMAT_VERSION,
        "created_by": f"longvlm pool {__version__}",
        "encoding": encoding,
        "settings": settings,
        "counts": {
            "inputs": len(entries) + len(rejected),
            "accepted": len(entries),
            "rejected": len(rejected),
            "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejected).items())),
            "pages": len(pages),
            "image_tokens": sum(p["tokens"] for p in pages),
            "page_bytes": sum(p["bytes"] for p in pages),
            "pages_by_format": dict(sorted(Counter(p["format"] for p in pages).items())),
        },
    }
    if merged_from is not None:
        info["merged_from"] = merged_from
    write_json(out / "pool.json", info)
    return info


def summary(out: Path, info: dict, seconds: float, already_complete: bool = False) -> PoolSummary:
    c = info["counts"]
    return PoolSummary(out, c["inputs"], c["accepted"], c["rejected"], c["pages"], c["image_tokens"],
                       c["rejected_by_reason"], seconds, already_complete)
