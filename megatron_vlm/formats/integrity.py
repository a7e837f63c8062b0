"""Checking stored files when they are opened, so that a truncated or damaged file is named at once
instead of failing at some item hours into training.

Writers record, per file, its size in bytes and a cheap checksum (``sampled_sha256``: about 1 MiB
read whatever the size); readers compare them. Independently of any record, a megatron-core
``IndexedDataset`` (``.idx`` + ``.bin``) is checked for structure: the ``.idx`` header's sequence
and document counts must give exactly the ``.idx`` size, and its last sequence pointer and length
exactly the ``.bin`` size.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from megatron_vlm.errors import LongVLMError
from megatron_vlm.utils.hashing import sampled_sha256

INDEX_HEADER = b"MMIDIDX\x00\x00"  # megatron-core's indexed_dataset._INDEX_HEADER, format version 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}  # megatron-core DType codes -> bytes


def file_record(path: str | os.PathLike) -> dict:
    """What a writer records about one finished file."""
    return {"bytes": os.path.getsize(path), "sampled_sha256": sampled_sha256(path)}


def check_file(path: str | os.PathLike, record: dict, error: type[LongVLMError]) -> None:
    """Raise ``error`` naming ``path`` if it is missing or differs from its ``record``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing")
    size, recorded = path.stat().st_size, record.get("bytes")
    if not isinstance(recorded, int):
        raise error(f"{path}: no size recorded for it (the record is damaged: rebuild)")
    if size != recorded:
        cut = " (truncated)" if size < recorded else ""
        raise error(f"{path}: {size:,} bytes, {recorded:,} recorded when it was written{cut}; "
                    "the file is damaged: restore or rebuild it")
    if sampled_sha256(path) != record.get("sampled_sha256"):
        raise error(f"{path}: checksum differs from the one recorded when it was written; the file is "
                    "damaged: restore or rebuild it")


def indexed_counts(prefix: str | os.PathLike, error: type[LongVLMError]) -> tuple[int, int]:
    """``(sequences, documents)`` of the IndexedDataset ``prefix``, after checking that its ``.idx``
    and ``.bin`` sizes are exactly those the ``.idx`` header implies; ``error`` names the bad file."""
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    for path in (idx, bin_):
        if not path.is_file():
            raise error(f"{path}: missing")
    idx_size = idx.stat().st_size
    with open(idx, "rb") as f:
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            raise error(f"{idx}: {idx_size} bytes, shorter than an IndexedDataset header (truncated)")
        magic, version, code, sequences, documents = _HEADER.unpack(head)
        if magic != INDEX_HEADER or version != 1 or code not in _ITEMSIZE:
            raise error(f"{idx}: not a megatron-core IndexedDataset index (bad header)")
        expected = _HEADER.size + 12 * sequences + 8 * documents
        if idx_size != expected:
            raise error(f"{idx}: {idx_size:,} bytes, its header implies {expected:,} "
                        f"({sequences} sequences, {documents - 1} documents){' (truncated)' if idx_size < expected else ''}")
        data_size = 0
        if sequences:
            f.seek(_HEADER.size + 4 * (sequences - 1))
            length = int(np.frombuffer(f.read(4), dtype=np.int32)[0])
            f.seek(_HEADER.size + 4 * sequences + 8 * (sequences - 1))
            pointer = int(np.frombuffer(f.read(8), dtype=np.int64)[0])
            data_size = pointer + length * _ITEMSIZE[code]
    bin_size = bin_.stat().st_size
    if bin_size != data_size:
        raise error(f"{bin_}: {bin_size:,} bytes, its index {idx.name} implies {data_size:,}"
                    f"{' (truncated)' if bin_size < data_size else ''}")
    return sequences, documents - 1
