"""The pool's stores: chunk files written by workers, and the final Megatron indexed datasets.

A worker writes each finished chunk of documents as a folder (atomically): ``pages.bin`` and
``layout.bin`` (the documents' encoded pages and layout JSON, concatenated) and ``results.jsonl``
(one line per input of the chunk: the manifest entry with its per-sequence lengths, or the
rejection). Assembling the pool appends the chunks, in input order, to ``pages``/``layout``
``IndexedDataset``s (dtype uint8, one sequence per page, one document per PDF) built with
megatron-core's ``IndexedDatasetBuilder``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from megatron_vlm.errors import OutputExistsError
from megatron_vlm.formats.pool import STORES, indexed_dataset_module
from megatron_vlm.utils.atomic import atomic_dir


def write_chunk(path: Path, results: Iterable[dict], pages: list[list[bytes]], layouts: list[list[bytes]]) -> None:
    """Atomically write one chunk folder; ``pages``/``layouts`` hold the accepted documents, in order.
    A chunk published meanwhile (by a worker of an earlier, killed run: the same content) is kept."""
    with contextlib.suppress(OutputExistsError), atomic_dir(path) as tmp:
        for name, docs in (("pages", pages), ("layout", layouts)):
            with open(tmp / f"{name}.bin", "wb") as f:
                for doc in docs:
                    for data in doc:
                        f.write(data)
                f.flush()
                os.fsync(f.fileno())
        with open(tmp / "results.jsonl", "w", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_chunk_results(path: Path) -> list[dict]:
    with open(path / "results.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def iter_chunk_documents(path: Path, results: list[dict], store: str) -> Iterator[tuple[np.ndarray, list[int]]]:
    """(bytes, sequence lengths) of each accepted document of a chunk, for one store."""
    key = "page_lengths" if store == "pages" else "layout_lengths"
    with open(path / f"{store}.bin", "rb") as f:
        for r in results:
            if "entry" in r:
                lengths = r[key]
                yield np.frombuffer(f.read(sum(lengths)), dtype=np.uint8), lengths


class StoreBuilder:
    """Builds ``PREFIX.bin/.idx`` (in a pool's staging directory); ``finalize`` writes the index."""

    def __init__(self, prefix: Path):
        self.prefix = Path(prefix)
        self.builder = indexed_dataset_module().IndexedDatasetBuilder(f"{self.prefix}.bin", dtype=np.uint8)
        self.num_sequences = 0

    def add_document(self, data: np.ndarray, lengths: list[int]) -> None:
        self.builder.add_document(data, lengths)
        self.num_sequences += len(lengths)

    def finalize(self) -> None:
        self.builder.finalize(f"{self.prefix}.idx")
        for suffix in (".bin", ".idx"):
            with open(f"{self.prefix}{suffix}", "rb+") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def store_builders(out: Path) -> Iterator[dict[str, StoreBuilder]]:
    """A ``StoreBuilder`` per store under ``out`` (a staging directory), finalized if the block succeeds."""
    builders = {name: StoreBuilder(out / name) for name in STORES}
    try:
        yield builders
    except BaseException:
        for builder in builders.values():
            builder.builder.data_file.close()
        raise
    for builder in builders.values():
        builder.finalize()
