"""Dataset build and loader at 128K on a real pool: build report and time, loader tokens/s per core.

1. Build: page-anchored tasks written from the pool's layout blocks (3 VQA tasks x 2 per
   document; stand-ins for ``longvlm synth``), built with the default mixture, ``--length-dist``
   and ``--token-budget`` at ``--seq-length``: prints the build report (mixture accuracy, length
   histogram, fill) and the build's wall and CPU time.
2. Loader: a dataset of one sample per document (so no page is decoded twice by the per-pack page
   cache, as in a large build), read by ``build_data_loader`` with ``num_workers=0`` (all the work
   in this process): reading, page decoding, the Qwen2.5-VL patch layout, labels, mRoPE positions.
   Reports tokens/s per core from CPU time (other jobs may share the machine) and wall time, and a
   per-stage breakdown.

    python scripts/bench_loader.py --pool POOL_DIR [--token-budget 2e7] [--batches 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from bench_inputs import write_tasks  # noqa: E402


def packing_on_synthetic_lengths(seq_length: int, n: int = 20000) -> None:
    """Fill of the packer vs the best possible on length distributions of a large pool."""
    import numpy as np

    from preprocess.dataset.packing import fill_ratio, fill_upper_bound, pack

    rng = np.random.default_rng(0)
    cases = {
        "32-50 pages x N(2100, 300) tokens (the paper's pool)": np.minimum(
            rng.integers(32, 51, n) * rng.normal(2100, 300, n), seq_length),
        "uniform 32K-128K": rng.integers(32_000, seq_length + 1, n),
        "lognormal, median 60K, sigma 0.5": np.clip(rng.lognormal(np.log(60_000), 0.5, n), 2_000, seq_length),
        "uniform 8K-128K": rng.integers(8_000, seq_length + 1, n),
    }
    for name, lengths in cases.items():
        lengths = lengths.astype(np.int64)
        fill = fill_ratio(lengths, pack(lengths, seq_length), seq_length)
        print(f"packing {n:,} samples, {name}: fill {fill:.2%} (bound {fill_upper_bound(lengths, seq_length):.2%}, "
              f"{(lengths >= 100_000).mean():.1%} of examples >= 100K)")
    print()


def timed_build(**options):
    from longvlm import api

    wall, cpu = time.perf_counter(), time.process_time()
    result = api.build(progress=False, **options)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", required=True, help="a pool written by 'longvlm pool'")
    parser.add_argument("--seq-length", type=int, default=131072)
    parser.add_argument("--token-budget", type=float, default=2e7, help="tokens of the build benchmark")
    parser.add_argument("--length-dist", default="pool-native", help="length target of the build benchmark")
    parser.add_argument("--batches", type=int, default=4, help="micro-batches (of one packed sequence) to time")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from megatron_vlm.data.dataset import BuiltDataset
    from megatron_vlm.data.loader import build_data_loader
    from megatron_vlm.data.micro_batch import micro_batch
    from megatron_vlm.tokenizer import write_offline_tokenizer
    from preprocess.dataset.cli import format_report
    from preprocess.dataset.run import open_pool

    pool = open_pool(args.pool)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = str(write_offline_tokenizer(tmp / "tokenizer"))
        # a throughput benchmark on 12 PDFs: it repeats samples far past the recipe's limit on purpose
        common = dict(pool=args.pool, tokenizer=tok, seq_length=args.seq_length, max_repeats=1e9)
        result, wall, cpu = timed_build(tasks=[str(write_tasks(pool, tmp / "tasks.jsonl"))], output=str(tmp / "mix"),
                                        token_budget=args.token_budget, length_dist=args.length_dist, **common)
        print(format_report(result.report))
        tokens = result.report["packing"]["tokens"]
        print(f"build: {tokens:,} tokens in {wall:.1f} s wall, {cpu:.1f} s CPU ({tokens / cpu:,.0f} tokens/s)\n")
        packing_on_synthetic_lengths(args.seq_length)

        one = write_tasks(pool, tmp / "one.jsonl", tasks=("extract-single",), pages_per_task=1)
        fits = [d["total_image_tokens"] for d in pool.documents if d["total_image_tokens"] < args.seq_length - 2000]
        timed_build(tasks=[str(one)], output=str(tmp / "one"), token_budget=float(sum(fits)),
                    mixture="extract-single=1", **common)
        prefix = tmp / "one"
        n = min(args.batches, len(BuiltDataset(prefix)))
        loader = build_data_loader(prefix, 1, num_workers=0, total_samples=n, seed=0)
        wall, cpu, tokens, real = time.perf_counter(), time.process_time(), 0, 0
        for batch in loader:
            tokens += batch["input_ids"].numel()
            real += int(batch["input_ids"].numel() - (batch["input_ids"] == 151643).sum())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"loader: {n} micro-batches of 1 x {args.seq_length:,} tokens ({real:,} sample tokens): "
              f"wall {wall:.2f} s, CPU {cpu:.2f} s")
        print(f"  {tokens / cpu:,.0f} tokens/s per core (CPU time), {tokens / wall:,.0f} tokens/s wall; "
              f"{real / cpu:,.0f} sample tokens/s per core")

        # per-stage breakdown (CPU time) on the same packs
        ds = BuiltDataset(prefix)
        stages = dict(read_and_decode=0.0, collate=0.0, of_which_patches=0.0)
        for i in range(n):
            t = time.process_time()
            item = ds[i]
            stages["read_and_decode"] += time.process_time() - t
            t = time.process_time()
            micro_batch([item], ds.geometry)
            stages["collate"] += time.process_time() - t
            t = time.process_time()
            for page in item["pages"]:
                ds.geometry.image_to_patches(page)
            stages["of_which_patches"] += time.process_time() - t
        print("  CPU s per sequence: " + ", ".join(f"{k} {v / n:.3f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
