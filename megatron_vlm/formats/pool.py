"""The document-pool format (``longvlm pool`` writes it; synth, build and the loader read it).

A pool directory holds ``pool.json`` (counts, and the size and checksum of every other file),
``manifest.jsonl`` (one entry per document), ``rejected.jsonl`` and two megatron-core
``IndexedDataset`` stores of dtype uint8, one sequence per page and one document per PDF:
``pages`` (encoded page images) and ``layout`` (layout blocks as JSON). The directory is published
whole by one rename. ``Pool.open`` checks every file against ``pool.json``. See docs/formats.md,
"Document pool".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path

from megatron_vlm.errors import LongVLMError
from megatron_vlm.formats.integrity import check_file, indexed_counts
from megatron_vlm.utils.hashing import sha256_file
from megatron_vlm.utils.jsonl import read_json, read_jsonl_objects

FORMAT_VERSION = 2  # 2: pool.json records "files" (size and sampled checksum); 1 is read without them
READ_VERSIONS = (1, 2)
STORES = ("pages", "layout")
CHECKED_FILES = ("manifest.jsonl", "rejected.jsonl", "pages.bin", "pages.idx", "layout.bin", "layout.idx")
FINGERPRINT_FILES = ("manifest.jsonl", "pages.idx")


class PoolFormatError(LongVLMError, ValueError):
    """The directory is not a (complete) pool."""


def indexed_dataset_module():
    """megatron-core's indexed_dataset (imported quietly: its package warns about TE/apex)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def open_store(prefix: Path):
    """megatron-core's reader of a pool store (keep it alive while its arrays are used)."""
    return indexed_dataset_module().IndexedDataset(str(prefix), multimodal=False, mmap=True)


def pool_fingerprint(pool_dir: str | os.PathLike) -> str:
    """SHA-256 over the pool's manifest and page-store index: changes whenever the pool does."""
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        path = Path(pool_dir) / name
        digest.update(name.encode())
        digest.update(sha256_file(path).encode() if path.exists() else b"missing")
    return digest.hexdigest()


class Pool:
    """A complete pool directory (see docs/formats.md, "Document pool").

    ``documents`` are the manifest entries in store order; page numbers are 1-based. The
    megatron-core ``IndexedDataset``s are opened lazily, once (under a lock: two threads opening
    a store at once would make two, and arrays of the one garbage-collected crash the process),
    and kept alive with the Pool (arrays they return are views of their memory maps). A Pool is
    safe to read from several threads and pickles without its open stores (worker processes).
    """

    def __init__(self, root: Path, info: dict, documents: list[dict]):
        self.root = root
        self.info = info
        self.documents = documents
        self.encoding: str = info.get("encoding", "auto")
        self._by_id = {d["doc_id"]: d for d in documents}
        self._stores: dict[str, object] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_stores", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _stores={}, _lock=threading.Lock())

    @classmethod
    def open(cls, pool_dir) -> Pool:
        """Open a complete pool, after checking every file against ``pool.json`` (sizes, checksums,
        page and document counts): a damaged file is named here, not when a page is read."""
        root = Path(pool_dir)
        info_path = root / "pool.json"
        if not info_path.is_file():
            raise PoolFormatError(f"{root} is not a complete document pool (no pool.json); "
                                  f"build it with 'longvlm pool INPUT... -o {root}'")
        info = read_json(info_path, PoolFormatError)
        if info.get("format_version") not in READ_VERSIONS:
            raise PoolFormatError(f"{info_path}: format_version {info.get('format_version')!r}; this longvlm "
                                  f"reads versions {', '.join(map(str, READ_VERSIONS))}")
        files, counts = info.get("files", {}), info.get("counts", {})
        if not (isinstance(files, dict) and all(isinstance(r, dict) for r in files.values())
                and isinstance(counts, dict)):
            raise PoolFormatError(f"{info_path}: 'files' and 'counts' are not what a pool.json holds; the pool is "
                                  "damaged: rebuild it")
        for name, record in files.items():
            check_file(root / name, record, PoolFormatError)
        documents = []
        for where, _, doc in read_jsonl_objects(root / "manifest.jsonl", PoolFormatError):
            if not isinstance(doc.get("doc_id"), str):
                raise PoolFormatError(f"{where}: a manifest entry without a doc_id; the pool is damaged: rebuild it")
            documents.append(doc)
        expected = (counts.get("pages"), counts.get("accepted"))
        for name in STORES:
            found = indexed_counts(root / name, PoolFormatError)
            if found != expected or len(documents) != expected[1]:
                raise PoolFormatError(f"{root / name}.idx: {found[0]} pages of {found[1]} documents, "
                                      f"manifest.jsonl {len(documents)} documents, pool.json {expected[0]} pages "
                                      f"of {expected[1]} documents: the pool is damaged; rebuild it")
        return cls(root, info, documents)

    @property
    def family(self) -> str:
        """The model family (``model_type``) whose geometry the pages were rendered for (pools of
        before families rendered for Qwen2.5-VL)."""
        from megatron_vlm.models.registry import DEFAULT_FAMILY

        return self.info.get("settings", {}).get("options", {}).get("family", DEFAULT_FAMILY)

    @property
    def pixel_bounds(self) -> tuple[int, int]:
        """The ``(min_pixels, max_pixels)`` pages were rendered within."""
        from megatron_vlm.models.registry import get_family

        options = self.info.get("settings", {}).get("options", {})
        geometry = get_family(self.family).geometry
        return int(options.get("min_pixels") or geometry.min_pixels), int(options.get("max_pixels") or geometry.max_pixels)

    def __len__(self) -> int:
        return len(self.documents)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._by_id

    def get(self, doc_id: str) -> dict:
        try:
            return self._by_id[doc_id]
        except KeyError:
            raise KeyError(f"doc_id {doc_id!r} is not in the pool {self.root}") from None

    def _index(self, doc_id: str, page_number: int) -> int:
        doc = self.get(doc_id)
        if not 1 <= page_number <= doc["num_pages"]:
            raise IndexError(f"page {page_number} out of range 1..{doc['num_pages']} for doc_id {doc_id}")
        return doc["page_start"] + page_number - 1

    def _store(self, name: str):
        store = self._stores.get(name)
        if store is None:
            with self._lock:
                store = self._stores.get(name)
                if store is None:
                    store = self._stores[name] = open_store(self.root / name)
        return store

    @property
    def pages_store(self):
        return self._store("pages")

    @property
    def layout_store(self):
        return self._store("layout")

    def page_bytes(self, doc_id: str, page_number: int) -> bytes:
        """The encoded image of a page (PNG or JPEG; see the page's ``format``)."""
        return self.pages_store[self._index(doc_id, page_number)].tobytes()

    def page_image(self, doc_id: str, page_number: int):
        """The page as an RGB PIL image of exactly the manifest's width x height."""
        from PIL import Image

        img = Image.open(io.BytesIO(self.page_bytes(doc_id, page_number)))
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")

    def page_blocks(self, doc_id: str, page_number: int) -> list[dict]:
        """The page's layout blocks in reading order (bbox, text, font_size, bold, label)."""
        return json.loads(self.layout_store[self._index(doc_id, page_number)].tobytes())
