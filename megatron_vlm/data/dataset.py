"""Reading a built dataset (``longvlm build``): one item per packed sequence, page images as patches."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_vlm.formats import dataset as fmt
from megatron_vlm.formats.dataset import (
    DatasetFormatError,
    dataset_family,
    dataset_geometry,
    open_dataset,
    open_indexed,
    pages_geometry,
)
from megatron_vlm.formats.pool import Pool, pool_fingerprint


def decode_page(data: bytes) -> np.ndarray:
    """Encoded page image -> ``HxWx3`` uint8 RGB pixels. A grayscale page (the pool stores text pages
    as grayscale PNG) becomes a read-only view repeating its one channel, not a converted copy."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if image.mode == "L":
        gray = np.asarray(image)
        return np.broadcast_to(gray[:, :, None], (*gray.shape, 3))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


class BuiltDataset(torch.utils.data.Dataset):
    """Item ``i`` = packed sequence ``i``: ``input_ids``, ``targets``, ``cu_seqlens`` (per sample),
    ``image_grid_thw`` ``[n, 3]`` and ``pages`` (the decoded ``HxWx3`` uint8 page images, in order;
    the collation turns them into ``pixel_values`` in place, see ``megatron_vlm.data.collate``).

    Short-data images (``--short-data``) come from ``DATA_PREFIX_pages``; pages come from the pool's
    page store (``pool``: an opened ``Pool`` or ``None`` to open the pool
    recorded in the dataset, or ``pool_dir`` to point at a moved pool) or, for datasets built with
    ``--copy-pages``, from ``DATA_PREFIX_pages``. Files are opened lazily in each (worker) process.
    """

    def __init__(self, prefix: str | Path, *, pool=None, pool_dir: str | Path | None = None,
                 check_pool: bool = True, decode_images: bool = True):
        self.prefix = str(prefix)
        self.meta = open_dataset(prefix)  # every file checked now, not at some item mid-training
        self.family = dataset_family(self.meta)
        self.geometry = dataset_geometry(self.meta)
        self.stored = pages_geometry(self.meta)
        self.resize = not self.geometry.same_patches(self.stored)  # pages resized at load time
        self.copied = self.meta["pages"] == "copied"
        self.pool_dir = str(pool_dir or self.meta["inputs"]["pool"]["path"])
        self.decode_images = decode_images
        self._pool = pool
        if not self.copied and check_pool and decode_images:
            recorded = self.meta["inputs"]["pool"]["fingerprint"]
            if pool_fingerprint(self.pool_dir) != recorded:
                raise DatasetFormatError(f"the pool at {self.pool_dir} is not the one {self.prefix} was built from "
                                         f"(fingerprint differs from {recorded[:12]}); rebuild or use --copy-pages")
            if self._pool is None:
                self._pool = Pool.open(self.pool_dir)  # its stores checked now too
        self._files: dict[str, IndexedDataset] | None = None
        self._num_packs = self.meta["counts"]["packs"]

    def __len__(self) -> int:
        return self._num_packs

    def _open(self) -> dict[str, IndexedDataset]:
        if self._files is None:
            self._files = {s: open_indexed(self.prefix, self.meta, s)
                           for s in fmt.suffixes(fmt.has_pages_file(self.meta))}
        return self._files

    @property
    def pool(self):
        if self._pool is None:
            self._pool = Pool.open(self.pool_dir)
        return self._pool

    def read_pack(self, index: int) -> dict[str, np.ndarray]:
        """The raw arrays of pack ``index`` (copies, safe to keep): tokens, targets, images, samples."""
        files = self._open()
        docs = files[fmt.TOKENS].document_indices
        lo, hi = int(docs[index]), int(docs[index + 1])
        out = {}
        for suffix, name in ((fmt.TOKENS, "tokens"), (fmt.TARGETS, "targets"), (fmt.IMAGES, "images"),
                             (fmt.SAMPLES, "samples")):
            out[name] = np.concatenate(files[suffix][lo:hi])  # concatenate copies out of the mmap
        out["sample_lengths"] = np.asarray(files[fmt.TOKENS].sequence_lengths[lo:hi], dtype=np.int64)
        out["images"] = out["images"].reshape(-1, len(fmt.IMAGE_FIELDS))
        out["samples"] = out["samples"].reshape(-1, len(fmt.SAMPLE_FIELDS))
        return out

    def page_pixels(self, record: np.ndarray) -> np.ndarray:
        """The ``HxWx3`` uint8 pixels of one image record (``fmt.IMAGE_FIELDS``)."""
        ordinal, page_number, page_index = (int(v) for v in record[:3])
        if self.copied or ordinal == fmt.SHORT_IMAGE:
            data = self._open()[fmt.PAGES][page_index].tobytes()
        else:
            data = self.pool.page_bytes(self.pool.documents[ordinal]["doc_id"], page_number)
        return decode_page(data)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        item = self.item(index)
        if self.decode_images:
            item["pages"] = self.decode_pages(item, range(len(item["image_grid_thw"])))
        return item

    def item(self, index: int) -> dict[str, np.ndarray]:
        """Pack ``index`` without pixels: ``input_ids``, ``targets``, ``cu_seqlens``, ``image_grid_thw``
        and the image records (``fmt.IMAGE_FIELDS``) that :meth:`decode_pages` reads."""
        raw = self.read_pack(int(index))
        grids = np.concatenate([np.ones((len(raw["images"]), 1), np.int64),
                                raw["images"][:, 3:5].astype(np.int64)], axis=1)
        return {
            "input_ids": raw["tokens"],
            "targets": raw["targets"],
            "cu_seqlens": np.concatenate([[0], np.cumsum(raw["sample_lengths"])]).astype(np.int32),
            "image_grid_thw": grids,
            "image_records": raw["images"],
        }

    def decode_pages(self, item: dict, images) -> list[np.ndarray | None]:
        """The ``HxWx3`` uint8 pixels of the item's images numbered in ``images`` (``None`` for the others),
        at the dataset's geometry (a page stored for another family's geometry is resized to its recorded
        grid); a page repeated within the pack (several tasks of one document) is decoded once."""
        wanted = set(images)
        cache: dict[int, np.ndarray] = {}
        pages = []
        for n, (record, grid) in enumerate(zip(item["image_records"], item["image_grid_thw"])):
            if n not in wanted:
                pages.append(None)
                continue
            key = (int(record[0]) == fmt.SHORT_IMAGE, int(record[2]))
            if key not in cache:
                pixels = self.page_pixels(record)
                if self.resize and not (
                        pixels.shape[0] % self.stored.factor or pixels.shape[1] % self.stored.factor):
                    patch = self.geometry.patch_size
                    pixels = self.geometry.fit(pixels, int(grid[1]) * patch, int(grid[2]) * patch)
                if self.geometry.grid_thw(*pixels.shape[:2]) != tuple(grid):
                    raise DatasetFormatError(f"{self.prefix}: page {record[:2].tolist()} decodes to "
                                             f"{pixels.shape[:2]} pixels, the dataset records grid {grid.tolist()}")
                cache[key] = pixels
            pages.append(cache[key])
        return pages
