"""The built-dataset format (``longvlm build`` writes it, the loader reads it): names and layouts.

A built dataset ``DATA_PREFIX`` is a set of megatron-core ``IndexedDataset`` files plus one JSON
file. In every indexed dataset below, one *sequence* is one training sample and one *document* is
one packed training sequence (``document_indices`` delimit the packs), so the sample boundaries of
pack ``p`` are the sequences ``document_indices[p]:document_indices[p + 1]``. See docs/formats.md.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
KIND = "longvlm-built-dataset"

# name suffix -> numpy dtype of the indexed dataset
TOKENS = "_tokens"        # int32 token ids, image placeholders expanded (one <|image_pad|> per 28x28 px)
TARGETS = "_targets"      # uint8, 1 where the token is a loss target (answer tokens + closing <|im_end|>)
IMAGES = "_images"        # int32, IMAGE_FIELDS per image of the sample, in context order
SAMPLES = "_samples"      # int64, SAMPLE_FIELDS per sample
PAGES = "_pages"          # uint8 encoded page images (only with --copy-pages), one sequence per page
DATASETS = {TOKENS: np.int32, TARGETS: np.uint8, IMAGES: np.int32, SAMPLES: np.int64}

IMAGE_FIELDS = ("doc_ordinal", "page_number", "page_index", "grid_h", "grid_w")
SAMPLE_FIELDS = ("task", "tasks_file", "line_number", "image_tokens", "target_tokens")

# Loader conventions.
PAD_ID = 151643  # <|endoftext|>: the padding token, and the label where there is nothing to predict


def meta_path(prefix: str | os.PathLike) -> Path:
    """``DATA_PREFIX.json``: format version, config, input hashes and the build report."""
    return Path(f"{prefix}.json")


def dataset_prefix(prefix: str | os.PathLike, suffix: str) -> str:
    return f"{prefix}{suffix}"


def output_files(prefix: str | os.PathLike, copy_pages: bool) -> list[Path]:
    """Every file of a built dataset, the JSON last."""
    suffixes = list(DATASETS) + ([PAGES] if copy_pages else [])
    files = [Path(f"{prefix}{s}{ext}") for s in suffixes for ext in (".bin", ".idx")]
    return files + [meta_path(prefix)]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


POOL_FINGERPRINT_FILES = ("manifest.jsonl", "pages.idx")


def pool_fingerprint(pool_dir: str | os.PathLike) -> str:
    """SHA-256 over the pool's manifest and page-store index: changes whenever the pool does."""
    digest = hashlib.sha256()
    for name in POOL_FINGERPRINT_FILES:
        path = Path(pool_dir) / name
        digest.update(name.encode())
        digest.update(sha256_file(path).encode() if path.exists() else b"missing")
    return digest.hexdigest()
