"""Writing a built dataset atomically: everything goes to a hidden temporary folder next to the
prefix and is renamed into place only once complete, ``DATA_PREFIX.json`` last.

A killed build leaves only that hidden folder (removed by the next build of the same prefix); an
earlier complete dataset at the prefix stays intact until the final renames.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_vlm.formats import dataset as fmt
from megatron_vlm.utils.atomic import write_json


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(prefix: Path) -> None:
    """Delete temporary folders left by killed builds of ``prefix``."""
    for tmp in prefix.parent.glob(f".{prefix.name}.build-*"):
        pid = tmp.name.rsplit(".build-", 1)[1].split("-", 1)[0]
        if not (pid.isdigit() and _pid_alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


class DatasetWriter:
    """Context manager: ``add_pack`` per packed sequence, ``add_page`` per copied page, then ``commit``."""

    def __init__(self, prefix: str | os.PathLike, copy_pages: bool = False):
        self.prefix = Path(prefix).absolute()
        self.copy_pages = copy_pages

    def __enter__(self) -> DatasetWriter:
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.prefix)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.prefix.name}.build-{os.getpid()}-", dir=self.prefix.parent))
        self.tmp_prefix = self.tmp / self.prefix.name
        self.builders = {s: IndexedDatasetBuilder(fmt.dataset_prefix(self.tmp_prefix, s) + ".bin", dtype=dt)
                         for s, dt in fmt.DATASETS.items()}
        if self.copy_pages:
            self.builders[fmt.PAGES] = IndexedDatasetBuilder(
                fmt.dataset_prefix(self.tmp_prefix, fmt.PAGES) + ".bin", dtype=np.uint8)
            self.pages_written = 0
        return self

    def add_pack(self, tokens: list[np.ndarray], targets: list[np.ndarray], images: list[np.ndarray],
                 samples: list[np.ndarray]) -> None:
        """One packed sequence: per sample its token ids, target mask, image records and sample fields."""
        for suffix, parts in ((fmt.TOKENS, tokens), (fmt.TARGETS, targets), (fmt.IMAGES, images),
                              (fmt.SAMPLES, samples)):
            self.builders[suffix].add_document(np.concatenate(parts), [len(p) for p in parts])

    def add_page(self, data: bytes) -> int:
        """Copy one encoded page image into ``DATA_PREFIX_pages``; returns its index there."""
        self.builders[fmt.PAGES].add_document(np.frombuffer(data, dtype=np.uint8), [len(data)])
        self.pages_written += 1
        return self.pages_written - 1

    def commit(self, meta: dict) -> list[Path]:
        """Finalize every file, then move them into place (the JSON last); returns the final paths."""
        for suffix, builder in self.builders.items():
            builder.finalize(fmt.dataset_prefix(self.tmp_prefix, suffix) + ".idx")
        write_json(fmt.meta_path(self.tmp_prefix), meta)
        final = fmt.output_files(self.prefix, self.copy_pages)
        with contextlib.suppress(FileNotFoundError):
            fmt.meta_path(self.prefix).unlink()  # the old dataset stops being valid before any file moves
        for stale in fmt.output_files(self.prefix, not self.copy_pages):
            if stale not in final:
                stale.unlink(missing_ok=True)
        for path in final:
            os.replace(self.tmp / path.name, path)
        return final

    def __exit__(self, *exc) -> None:
        for builder in self.builders.values():
            with contextlib.suppress(Exception):
                builder.data_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
