"""The built-dataset format (``longvlm build`` writes it, the loader and ``stats`` read it).

A built dataset ``DATA_PREFIX`` is one JSON file, ``DATA_PREFIX.json``, and a hidden version
directory beside it that the JSON names (``files_dir``: ``.NAME.v-HOST-PID-RANDOM``) holding
megatron-core ``IndexedDataset`` files ``NAME_tokens.bin/.idx`` etc. The JSON is the pointer: a
build writes a new version directory and then replaces the JSON atomically, so a reader sees the
old dataset or the new one, never a mix. The JSON records every file's size and checksum and the
pack/sample/page counts; ``open_dataset`` checks them.

In every indexed dataset below, one *sequence* is one training sample and one *document* is one
packed training sequence (``document_indices`` delimit the packs), so the sample boundaries of
pack ``p`` are the sequences ``document_indices[p]:document_indices[p + 1]``. See docs/formats.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from megatron_vlm.errors import LongVLMError
from megatron_vlm.formats.integrity import check_file, indexed_counts
from megatron_vlm.utils.jsonl import read_json

FORMAT_VERSION = 2  # 2: files in the version directory named by the JSON, with sizes, checksums, counts
KIND = "longvlm-built-dataset"

# name suffix -> numpy dtype of the indexed dataset
TOKENS = "_tokens"        # int32 token ids, image placeholders expanded (one <|image_pad|> per 28x28 px)
TARGETS = "_targets"      # uint8, 1 where the token is a loss target (answer tokens + closing <|im_end|>)
IMAGES = "_images"        # int32, IMAGE_FIELDS per image of the sample, in context order
SAMPLES = "_samples"      # int64, SAMPLE_FIELDS per sample
PAGES = "_pages"          # uint8 encoded images, one sequence per image: the pages (--copy-pages) and the
                          # short-data images (--short-data; image records with doc_ordinal SHORT_IMAGE)
DATASETS = {TOKENS: np.int32, TARGETS: np.uint8, IMAGES: np.int32, SAMPLES: np.int64}

IMAGE_FIELDS = ("doc_ordinal", "page_number", "page_index", "grid_h", "grid_w")
SHORT_IMAGE = -1  # doc_ordinal of a short-data image: page_number = its number in the sample, page_index in _pages
SAMPLE_FIELDS = ("task", "tasks_file", "line_number", "image_tokens", "target_tokens")

# Loader conventions.
PAD_ID = 151643  # <|endoftext|>: the padding token, and the label where there is nothing to predict


def dataset_family(meta: dict) -> str:
    """The model family (``model_type``) a dataset was built for (datasets of before families: Qwen2.5-VL's)."""
    from megatron_vlm.models.registry import DEFAULT_FAMILY

    return meta.get("model", {}).get("family", DEFAULT_FAMILY)


def dataset_geometry(meta: dict):
    """The ``ImageGeometry`` a dataset's image grids are in (what the loader patches its pages with)."""
    from megatron_vlm.models.geometry import ImageGeometry
    from megatron_vlm.models.registry import get_family

    recorded = meta.get("model", {}).get("geometry")
    return ImageGeometry.from_json(recorded) if recorded else get_family(dataset_family(meta)).geometry


def pages_geometry(meta: dict):
    """The ``ImageGeometry`` the dataset's source pages are stored at (its pool's family's)."""
    from megatron_vlm.models.registry import get_family

    return get_family(meta.get("model", {}).get("pages_family", dataset_family(meta))).geometry


def meta_path(prefix: str | os.PathLike) -> Path:
    """``DATA_PREFIX.json``: format version, config, input hashes, the build report, and the pointer
    to the files (``files_dir``) with their sizes and checksums."""
    return Path(f"{prefix}.json")


def has_pages_file(meta: dict) -> bool:
    """Whether the dataset has ``_pages``: built with ``--copy-pages``, or holding short-data images."""
    return meta["pages"] == "copied" or meta["counts"]["pages"] > 0


def suffixes(pages_file: bool) -> list[str]:
    """The dataset's IndexedDataset suffixes (``pages_file``: :func:`has_pages_file`)."""
    return list(DATASETS) + ([PAGES] if pages_file else [])


def data_prefix(prefix: str | os.PathLike, meta: dict) -> str:
    """Where the IndexedDataset files of the dataset live: ``DIR/FILES_DIR/NAME`` (+ suffix)."""
    prefix = Path(prefix)
    return str(prefix.parent / meta["files_dir"] / prefix.name)


class DatasetFormatError(LongVLMError, ValueError):
    """The prefix is not a (complete, compatible, undamaged) built dataset, or its pool changed."""


def row_length(meta: dict) -> int:
    """The packed row length a dataset was built for (``longvlm build --seq-length``), from its metadata."""
    return int(meta["config"]["seq_length"])


def read_meta(prefix: str | os.PathLike) -> dict:
    """``DATA_PREFIX.json``, checked for kind and format version."""
    path = meta_path(prefix)
    if not path.is_file():
        raise DatasetFormatError(f"{path} not found: {prefix} is not a complete built dataset "
                                 "(run 'longvlm build ... -o PREFIX')")
    meta = read_json(path, DatasetFormatError)
    if meta.get("kind") != KIND or meta.get("format_version") != FORMAT_VERSION:
        hint = " (an older build: rebuild it with the same 'longvlm build' command)" \
            if meta.get("kind") == KIND and meta.get("format_version") == 1 else ""
        raise DatasetFormatError(f"{path}: kind {meta.get('kind')!r} version {meta.get('format_version')!r}; "
                                 f"this reader reads {KIND!r} version {FORMAT_VERSION}{hint}")
    config = meta.get("config")
    if isinstance(config, dict) and "seq_length" not in config and "max_seq_len" in config:
        config["seq_length"] = config.pop("max_seq_len")  # built before `longvlm build --max-seq-len` became --seq-length
    missing = [key for key, kind in _SHAPE if not isinstance(_get(meta, key), kind)]
    if missing:
        raise DatasetFormatError(f"{path}: {', '.join(missing)} missing or of the wrong type; the file is damaged: "
                                 "rebuild the dataset")
    return meta


# what the readers take from DATA_PREFIX.json, and its type
_SHAPE = (("files", dict), ("files_dir", str), ("pages", str), ("counts.samples", int), ("counts.packs", int),
          ("counts.pages", int), ("config.seq_length", int), ("inputs.pool.path", str),
          ("inputs.pool.fingerprint", str), ("inputs.tokenizer.sha256", dict), ("task_names", list))


def _get(meta: dict, dotted: str):
    value = meta
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def check_dataset(prefix: str | os.PathLike, meta: dict) -> None:
    """Every file against its recorded size and checksum, and each IndexedDataset's structure and
    counts against the JSON; raises DatasetFormatError naming the bad file."""
    base = Path(data_prefix(prefix, meta))
    for name, record in meta["files"].items():
        if not isinstance(record, dict):
            raise DatasetFormatError(f"{meta_path(prefix)}: the record of {name} is damaged: rebuild the dataset")
        check_file(base.parent / name, record, DatasetFormatError)
    counts = meta["counts"]
    for suffix in suffixes(has_pages_file(meta)):
        expected = (counts["pages"], counts["pages"]) if suffix == PAGES else (counts["samples"], counts["packs"])
        found = indexed_counts(f"{base}{suffix}", DatasetFormatError)
        if found != expected:
            raise DatasetFormatError(f"{base}{suffix}.idx: {found[0]} sequences in {found[1]} documents, "
                                     f"{meta_path(prefix).name} records {expected[0]} in {expected[1]}")


def open_dataset(prefix: str | os.PathLike) -> dict:
    """``DATA_PREFIX.json`` after checking every file of the dataset (``check_dataset``)."""
    meta = read_meta(prefix)
    check_dataset(prefix, meta)
    return meta


def open_indexed(prefix: str | os.PathLike, meta: dict, suffix: str):
    """One of the dataset's megatron-core ``IndexedDataset`` files."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    path = f"{data_prefix(prefix, meta)}{suffix}"
    if not IndexedDataset.exists(path):
        raise DatasetFormatError(f"{path}.bin/.idx missing: {prefix} is incomplete")
    return IndexedDataset(path, mmap=True)


def max_samples_per_pack(prefix: str | os.PathLike, meta: dict) -> int:
    """The most samples any packed sequence of the dataset holds."""
    tokens = open_indexed(prefix, meta, TOKENS)  # held while its memory-mapped index is read
    docs = tokens.document_indices
    return int(np.diff(docs).max()) if len(docs) > 1 else 0
