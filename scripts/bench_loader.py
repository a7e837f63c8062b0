"""Loader throughput at 128K: tokens/s on one core (the training loader's work in one process).

Builds a dataset from a real pool (one extract-single sample per document, so no page is decoded
twice by the per-pack page cache, as in a large build), then times ``build_data_loader`` with
``num_workers=0`` (everything in this process) over packed sequences of ``--max-seq-len``:
reading the indexed datasets, decoding the pool's pages, the Qwen2.5-VL patch layout, labels,
mRoPE positions and collation. Reports wall and CPU time (other jobs may share the machine; CPU
time is what one core spends) and a per-stage breakdown.

    python scripts/bench_loader.py --pool POOL_DIR [--batches 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402


def make_dataset(pool_dir: str, out: Path, max_seq_len: int) -> Path:
    from megatron_vlm.tokenizer import write_offline_qwen_tokenizer
    from preprocess.build.config import BuildConfig
    from preprocess.build.run import build, open_pool

    pool = open_pool(pool_dir)
    rows = []
    for doc in pool.documents:
        text = " ".join(b["text"] for b in pool.page_blocks(doc["doc_id"], 1))[:200] or "(no text)"
        rows.append({"id": doc["doc_id"][:16], "task": "extract-single", "doc_id": doc["doc_id"],
                     "question": "What does the first page (Page 1) say at the top?", "answer": text,
                     "evidence_pages": [1], "segment": None, "generator": {"name": "bench"}})
    tasks = out / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = write_offline_qwen_tokenizer(out / "tokenizer")
    fits = [d["total_image_tokens"] for d in pool.documents if d["total_image_tokens"] < max_seq_len - 2000]
    result = build(BuildConfig(tasks=[str(tasks)], pool=pool_dir, tokenizer=str(tok), output=str(out / "data"),
                               max_seq_len=max_seq_len, token_budget=float(sum(fits)), mixture="extract-single=1",
                               progress=False), pool=pool)
    packing = result.report["packing"]
    print(f"dataset: {packing['samples']} samples in {packing['packs']} packs of {max_seq_len:,} "
          f"(fill {packing['fill_ratio']:.1%}); {len(pool.documents) - len(fits)} documents longer than that left out")
    return out / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", required=True, help="a pool written by 'longvlm pool'")
    parser.add_argument("--max-seq-len", type=int, default=131072)
    parser.add_argument("--batches", type=int, default=4, help="micro-batches (of one packed sequence) to time")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from megatron_vlm.data.collate import collate_packs
    from megatron_vlm.data.dataset import BuiltDataset
    from megatron_vlm.data.loader import build_data_loader
    from megatron_vlm.data.vision import image_to_patches

    with tempfile.TemporaryDirectory() as tmp:
        prefix = make_dataset(args.pool, Path(tmp), args.max_seq_len)
        n = min(args.batches, len(BuiltDataset(prefix)))
        loader = build_data_loader(prefix, 1, num_workers=0, total_samples=n, seed=0)
        wall, cpu, tokens, real = time.perf_counter(), time.process_time(), 0, 0
        for batch in loader:
            tokens += batch["input_ids"].numel()
            real += int(batch["loss_mask"].numel() - (batch["input_ids"] == 151643).sum())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"loader: {n} micro-batches of 1 x {args.max_seq_len:,} tokens ({real:,} sample tokens): "
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
            collate_packs([item], args.max_seq_len)
            stages["collate"] += time.process_time() - t
            t = time.process_time()
            for page in item["pages"]:
                image_to_patches(page)
            stages["of_which_patches"] += time.process_time() - t
        print("  CPU s per sequence: " + ", ".join(f"{k} {v / n:.3f}" for k, v in stages.items()))

if __name__ == "__main__":
    main()
