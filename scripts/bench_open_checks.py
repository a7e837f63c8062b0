"""Cost of the open-time checks (``megatron_vlm/formats/integrity.py``) against a full checksum.

    python scripts/bench_open_checks.py [--gib 2] [--dir /tmp]

Writes a megatron-core IndexedDataset of --gib GiB of random uint8 data (1 MiB sequences) and
times, each over a warm page cache (the file was just written): the open-time checks the pool and
dataset readers run (size + ``sampled_sha256`` of the .bin and .idx, and the .idx header structure
check), and, for comparison, a full SHA-256 of the .bin. The sampled checksum reads about 1 MiB per
file whatever the size, so its cost does not grow with the data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_vlm.errors import LongVLMError  # noqa: E402
from megatron_vlm.formats.integrity import check_file, file_record, indexed_counts  # noqa: E402
from megatron_vlm.utils.hashing import sha256_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the .bin file in GiB")
    parser.add_argument("--dir", default=None, help="where to write it (default: a temporary folder)")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        prefix = Path(tmp) / "data"
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint8)
        rng = np.random.default_rng(0)
        block = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
        n = int(args.gib * 1024)
        for i in range(n):
            builder.add_document(np.roll(block, i), [1 << 20])
        builder.finalize(f"{prefix}.idx")
        records = {s: file_record(f"{prefix}{s}") for s in (".bin", ".idx")}
        start = time.perf_counter()
        for s, record in records.items():
            check_file(f"{prefix}{s}", record, LongVLMError)
        counts = indexed_counts(prefix, LongVLMError)
        checks = time.perf_counter() - start
        start = time.perf_counter()
        sha256_file(f"{prefix}.bin")
        full = time.perf_counter() - start
        print(f"{n} sequences, {n / 1024:.2f} GiB (.bin), counts {counts}")
        print(f"open-time checks (sizes, sampled_sha256 of .bin and .idx, .idx structure): {checks * 1000:.1f} ms")
        print(f"full SHA-256 of the .bin, for comparison: {full:.2f} s ({n / 1024 / full:.2f} GiB/s)")


if __name__ == "__main__":
    main()
