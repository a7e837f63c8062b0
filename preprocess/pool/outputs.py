"""What a pool run writes last and reports: the manifest, the rejections, ``pool.json``, the summary."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from megatron_vlm import __version__
from megatron_vlm.errors import LongVLMError
from megatron_vlm.formats.integrity import file_record
from megatron_vlm.formats.pool import CHECKED_FILES, FORMAT_VERSION
from megatron_vlm.utils.atomic import atomic_dir, atomic_write, write_json
from megatron_vlm.utils.stop_points import stop_point
from preprocess.pool.chunk import rejection
from preprocess.pool.store import StoreBuilder, store_builders


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


def check_output(out: Path) -> dict | None:
    """``pool.json`` of a complete pool at ``out``; ``None`` if ``out`` is free (absent or an empty
    directory); else PoolError."""
    if out.exists() and not out.is_dir():
        raise PoolError(f"-o {out}: is a file, not a pool directory; choose a new or empty directory")
    if (out / "pool.json").is_file():
        try:
            return json.loads((out / "pool.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PoolError(f"{out / 'pool.json'}: unreadable ({err}); choose another -o") from None
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held:
        raise PoolError(f"-o {out}: exists and is not a pool directory (it holds {', '.join(held[:5])}); "
                        f"choose a new or empty directory")
    return None


MANIFEST_ORDER = ("doc_id", "source", "input_index", "num_pages", "page_start", "total_image_tokens",
                  "title", "scanned_pages", "sections", "pages")


def write_pool(out: Path, add_documents: Callable[[dict[str, StoreBuilder]], tuple[list[dict], list[dict]]],
               settings: dict, encoding: str, merged_from: list[str] | None = None) -> dict:
    """Write a whole pool into a staging directory beside ``out`` and publish it with one rename.

    ``add_documents(builders)`` fills the page and layout stores and returns the manifest entries
    and the rejections. Returns ``pool.json``'s content.
    """
    with atomic_dir(out, replace_empty_dir=True) as tmp:
        with store_builders(tmp) as builders:
            entries, rejected = add_documents(builders)
        with atomic_write(tmp / "manifest.jsonl") as f:
            for entry in entries:
                ordered = {k: entry[k] for k in MANIFEST_ORDER if k in entry}
                f.write(json.dumps(ordered, ensure_ascii=False) + "\n")
        with atomic_write(tmp / "rejected.jsonl") as f:
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
            "files": {name: file_record(tmp / name) for name in CHECKED_FILES},
        }
        if merged_from is not None:
            info["merged_from"] = merged_from
        write_json(tmp / "pool.json", info)
        stop_point("pool.publish")
    return info


def summary(out: Path, info: dict, seconds: float, already_complete: bool = False) -> PoolSummary:
    c = info["counts"]
    return PoolSummary(out, c["inputs"], c["accepted"], c["rejected"], c["pages"], c["image_tokens"],
                       c["rejected_by_reason"], seconds, already_complete)
