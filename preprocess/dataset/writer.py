"""Writing a built dataset as one atomic step (``megatron_vlm.utils.atomic.versioned_dir``).

Every file goes into a new hidden version directory beside the prefix; the commit is one atomic
replace of ``DATA_PREFIX.json``, which names that directory and records every file's size and
checksum. A build killed at any point leaves the earlier dataset at the prefix intact and valid
(the JSON still names its files); its own version directory is removed by the next build of the
prefix, and so is the previous version once the JSON no longer names it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_vlm.formats import dataset as fmt
from megatron_vlm.formats.integrity import file_record
from megatron_vlm.utils.atomic import versioned_dir, write_json
from megatron_vlm.utils.stop_points import stop_point


def live_version(prefix: Path) -> str | None:
    """The version directory the prefix's JSON names now (``None``: no dataset, or an unreadable one)."""
    try:
        return json.loads(fmt.meta_path(prefix).read_text()).get("files_dir")
    except (OSError, ValueError, AttributeError):
        return None


class DatasetWriter:
    """Context manager: ``add_pack`` per packed sequence, ``add_page`` per copied page, then ``commit``."""

    def __init__(self, prefix: str | os.PathLike, copy_pages: bool = False):
        self.prefix = Path(prefix).absolute()
        self.copy_pages = copy_pages
        self.packs = self.samples = self.pages_written = 0

    def __enter__(self) -> DatasetWriter:
        self._stack = contextlib.ExitStack()
        self.dir = self._stack.enter_context(versioned_dir(self.prefix, live_version(self.prefix)))
        base = self.dir / self.prefix.name
        dtypes = dict(fmt.DATASETS, **({fmt.PAGES: np.uint8} if self.copy_pages else {}))
        self.builders = {s: IndexedDatasetBuilder(f"{base}{s}.bin", dtype=dt) for s, dt in dtypes.items()}
        return self

    def add_pack(self, tokens: list[np.ndarray], targets: list[np.ndarray], images: list[np.ndarray],
                 samples: list[np.ndarray]) -> None:
        """One packed sequence: per sample its token ids, target mask, image records and sample fields."""
        for suffix, parts in ((fmt.TOKENS, tokens), (fmt.TARGETS, targets), (fmt.IMAGES, images),
                              (fmt.SAMPLES, samples)):
            self.builders[suffix].add_document(np.concatenate(parts), [len(p) for p in parts])
        self.packs += 1
        self.samples += len(tokens)

    def add_page(self, data: bytes) -> int:
        """Copy one encoded page image into ``DATA_PREFIX_pages``; returns its index there."""
        self.builders[fmt.PAGES].add_document(np.frombuffer(data, dtype=np.uint8), [len(data)])
        self.pages_written += 1
        return self.pages_written - 1

    def commit(self, meta: dict) -> list[Path]:
        """Finalize every file, then switch ``DATA_PREFIX.json`` to them; returns the written paths."""
        base = self.dir / self.prefix.name
        for suffix, builder in self.builders.items():
            builder.finalize(f"{base}{suffix}.idx")
        paths = sorted(self.dir.iterdir())
        for path in paths:
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        meta = dict(meta, files_dir=self.dir.name, files={p.name: file_record(p) for p in paths},
                    counts={"packs": self.packs, "samples": self.samples, "pages": self.pages_written})
        stop_point("build.commit")
        write_json(fmt.meta_path(self.prefix), meta)  # the commit
        stop_point("build.committed")  # (the previous version is deleted after this)
        return [fmt.meta_path(self.prefix), *paths]

    def __exit__(self, *exc) -> None:
        for builder in self.builders.values():
            if not builder.data_file.closed:
                builder.data_file.close()
        self._stack.__exit__(*exc)
