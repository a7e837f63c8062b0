"""SHA-256 of files, streamed (pool deduplication, dataset and pool fingerprints)."""

from __future__ import annotations

import hashlib
import os

BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


SAMPLE_BLOCK = 1 << 16
SAMPLE_COUNT = 16


def sampled_sha256(path: str | os.PathLike) -> str:
    """A cheap checksum of a large file: hex SHA-256 of its size and of SAMPLE_COUNT blocks of
    64 KiB spread evenly from its first to its last byte (the whole file if it is smaller).
    Reads at most 1 MiB whatever the size; catches truncation, and corruption in the sampled blocks."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCK * SAMPLE_COUNT:
            digest.update(f.read())
        else:
            last = size - SAMPLE_BLOCK
            for i in range(SAMPLE_COUNT):
                f.seek(last * i // (SAMPLE_COUNT - 1))
                digest.update(f.read(SAMPLE_BLOCK))
    return digest.hexdigest()
