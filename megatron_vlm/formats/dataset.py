"""The built-dataset format (``longvlm build`` writes it, the loader and ``stats`` read it).

A built dataset ``DATA_PREFIX`` is a set of megatron-core ``IndexedDataset`` files plus one JSON
file. In every indexed dataset below, one *sequence* is one training sample and one *document* is
one packed training sequence (``document_indices`` delimit the packs), so the sample boundaries of
pack ``p`` are the sequences ``document_indices[p]:document_indices[p + 1]``. See docs/formats.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from megatron_vlm.errors import LongVLMError

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


class DatasetFormatError(LongVLMError, ValueError):
    """The prefix is not a (complete, compatible) built dataset, or its pool changed."""


def read_meta(prefix: str | os.PathLike) -> dict:
    """``DATA_PREFIX.json``, checked for kind and format version."""
    path = meta_path(prefix)
    if not path.is_file():
        raise DatasetFormatError(f"{path} not found: {prefix} is not a complete built dataset "
                                 "(run 'longvlm build ... -o PREFIX')")
    meta = json.loads(path.read_text())
    if meta.get("kind") != KIND or meta.get("format_version") != FORMAT_VERSION:
        raise DatasetFormatError(f"{path}: kind {meta.get('kind')!r} version {meta.get('format_version')!r}; "
                                 f"this reader reads {KIND!r} version {FORMAT_VERSION}")
    return meta


def open_indexed(prefix: str | os.PathLike, suffix: str):
    """One of the dataset's megatron-core ``IndexedDataset`` files."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    path = dataset_prefix(prefix, suffix)
    if not IndexedDataset.exists(path):
        raise DatasetFormatError(f"{path}.bin/.idx missing: {prefix} is incomplete")
    return IndexedDataset(path, mmap=True)
