"""Input discovery: expand INPUTs into an ordered list of candidate files, and pick a shard of it.

Order is deterministic: INPUTs in the order given; a folder contributes its ``*.pdf`` files
(case-insensitive, recursively) sorted by path; a list file its lines in order (blank lines and
``#`` comments skipped, relative paths resolved against the list file's folder). A path given
twice is kept once. Any other file given directly (even if not a PDF) is an input, so that it is
reported in ``rejected.jsonl`` rather than silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

from megatron_vlm.errors import LongVLMError

LIST_SUFFIXES = (".txt", ".lst", ".list")


class InputError(LongVLMError, ValueError):
    """An INPUT that cannot be expanded (missing folder or list file)."""


def _pdfs_in(folder: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in files if f.lower().endswith(".pdf"))
    return sorted(found)


def _listed(list_file: Path) -> list[str]:
    paths = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            paths.append(str(p if p.is_absolute() else list_file.parent / p))
    return paths


def discover(inputs: list[str]) -> list[str]:
    """All candidate files, in the deterministic input order."""
    out: list[str] = []
    seen: set[str] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _pdfs_in(path)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            found = _listed(path)
        elif path.exists() or path.suffix.lower() == ".pdf":
            found = [str(path)]  # a missing .pdf is reported as unreadable, not fatal
        else:
            raise InputError(f"{item}: no such file or folder")
        for f in found:
            key = os.path.abspath(f)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def shard_indices(n: int, shard: int, num_shards: int) -> list[int]:
    """Global input indices of one shard: round-robin, so shards get similar mixes of files."""
    return list(range(shard, n, num_shards))
