"""Real inputs for the benchmark scripts: a pool of the demo PDFs, page-anchored tasks, built datasets,
tiny-to-1B random Qwen2.5-VL checkpoints. Benchmarks run on rendered pages at their real image-token
share, never on image-free mock rows (a VLM measured without images looks about twice as fast)."""

from __future__ import annotations

import json
from pathlib import Path

DEMO_PDFS = Path(__file__).resolve().parents[1] / "longvlm" / "demo_pdfs"
VQA = ("extract-single", "extract-multi", "reasoning")

# model sizes for the benchmarks (tiny_qwen25vl_config overrides); the vocabulary is Qwen's 151,936
MODELS = {
    "tiny": {},
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=704,
                  mrope_section=(8, 12, 12), vision_depth=4, vision_hidden_size=128, vision_heads=4,
                  vision_intermediate_size=352),
    "100m": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2, intermediate_size=1408,
                 mrope_section=(8, 12, 12), vision_depth=8, vision_hidden_size=256, vision_heads=4,
                 vision_intermediate_size=704, fullatt_block_indexes=(3, 7), tie_word_embeddings=True),
    "1b": dict(hidden_size=1536, num_layers=20, num_heads=12, num_kv_heads=2, intermediate_size=8960,
               mrope_section=(16, 24, 24), vision_depth=16, vision_hidden_size=640, vision_heads=10,
               vision_intermediate_size=1728, fullatt_block_indexes=(3, 7, 11, 15), tie_word_embeddings=True),
}


def write_tasks(pool, path: Path, tasks=VQA, pages_per_task: int = 2) -> Path:
    """Page-anchored questions whose answers are the page's first text (no generator needed)."""
    rows = []
    for doc in pool.documents:
        for k, task in enumerate(tasks):
            for page in sorted({1 + k, doc["num_pages"] - k})[:pages_per_task]:
                text = " ".join(b["text"] for b in pool.page_blocks(doc["doc_id"], page)).strip()[:200]
                rows.append({"id": f"{doc['doc_id'][:12]}-{task}-{page}", "task": task, "doc_id": doc["doc_id"],
                             "question": f"What is the first text on page {page}?", "answer": text or "Nothing.",
                             "evidence_pages": [page], "segment": None, "generator": {"name": "bench"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_pool(out: Path, dpi: int, pdfs: Path = DEMO_PDFS) -> Path:
    from longvlm import api

    if not (out / "pool.json").exists():
        api.pool(inputs=[str(pdfs)], output=str(out), min_pages=0, max_pages=0, dpi=dpi, progress=False)
    return out


def make_dataset(pool_dir: Path, out: Path, seq_length: int, token_budget: float) -> Path:
    """A built dataset of page-anchored tasks over every document that fits ``seq_length``."""
    from longvlm import api
    from megatron_vlm.formats.pool import Pool
    from megatron_vlm.tokenizer import write_offline_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    if not Path(f"{out / 'data'}.json").exists():
        tokenizer = write_offline_tokenizer(out / "tokenizer")
        tasks = write_tasks(Pool.open(pool_dir), out / "tasks.jsonl")
        api.build(tasks=[str(tasks)], pool=str(pool_dir), tokenizer=str(tokenizer), output=str(out / "data"),
                  seq_length=seq_length, token_budget=token_budget, max_repeats=1e9, progress=False)
    return out / "data"


def make_model(out: Path, size: str) -> Path:
    """A random HF Qwen2.5-VL checkpoint of one of the ``MODELS`` sizes (with the offline tokenizer)."""
    import shutil

    from megatron_vlm.models.registry import get_family
    from megatron_vlm.tokenizer import write_offline_tokenizer

    if not (out / "config.json").exists():
        get_family("qwen2_5_vl").save_tiny_checkpoint(out, seed=0, **MODELS[size])
        tok = write_offline_tokenizer(out.parent / f"{out.name}-tokenizer")
        for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copyfile(tok / name, out / name)
    return out
