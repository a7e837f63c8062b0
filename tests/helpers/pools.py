"""Comparing written pools: the bytes of every file a pool run writes."""

from __future__ import annotations

from pathlib import Path

POOL_FILES = ("manifest.jsonl", "rejected.jsonl", "pages.bin", "pages.idx", "layout.bin", "layout.idx")


def pool_files(path: Path) -> dict[str, bytes]:
    """``{file name: bytes}`` of the pool in ``path``: two pools are the same pool if these are equal."""
    return {name: (path / name).read_bytes() for name in POOL_FILES}
