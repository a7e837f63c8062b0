"""Training runs in tests. Their inputs: a tiny HF Qwen2.5-VL checkpoint (4 LM layers) and a built dataset with
its pages copied in (rows of at most 512 tokens; answers of very different lengths), and the ``key=value``
overrides that train it for a few steps on a CPU. Their outputs: the train records of ``metrics.jsonl``, and a
run directory rewound to an earlier checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers.build_fakes import FakePool, write_tasks


def make_train_inputs(tmp: Path, tokenizer_dir: Path) -> dict:
    """``{"hf": HF_DIR, "data": DATA_PREFIX, "tmp": tmp}`` under ``tmp``."""
    from megatron_vlm.models.registry import get_family
    from preprocess.dataset.config import BuildConfig
    from preprocess.dataset.run import build

    hf = get_family("qwen2_5_vl").save_tiny_checkpoint(tmp / "hf", seed=3, num_layers=4)
    sizes = {f"{i:064x}": [(56 * (1 + (i + p) % 3), 28 * (2 + p % 2)) for p in range(2 + i % 3)] for i in range(8)}
    pool = FakePool(tmp / "pool", sizes).register()
    rows = []
    for i, doc in enumerate(sizes):
        answer = "yes" if i % 2 else " ".join(f"item {k} of the list on page {k % 3 + 1}" for k in range(12))
        rows.append({"task": "extract-single" if i % 2 else "extract-multi", "doc_id": doc,
                     "question": f"Question {i}: what is on page 1?", "answer": answer})
    tasks = write_tasks(tmp / "tasks.jsonl", rows)
    build(BuildConfig(tasks=[str(tasks)], pool=str(tmp / "pool"), tokenizer=str(tokenizer_dir),
                      output=str(tmp / "data"), seq_length=512, token_budget=2500, copy_pages=True,
                      mixture="extract-single=1,extract-multi=1", progress=False), pool=pool)
    return {"hf": hf, "data": tmp / "data", "tmp": tmp}


def train_overrides(inputs: dict, steps: int, **extra) -> list[str]:
    """Overrides of the ``tiny-cpu`` recipe: ``steps`` fp32 steps of 4 rows on ``inputs``, no saves but the last.
    The run starts from the Megatron conversion of the HF checkpoint (``inputs["megatron"]``; a run started from
    the HF directory converts it into ``RUN_DIR/init`` in a process of its own first, ~7 s on 2 cores): give
    ``model.checkpoint=inputs["hf"]`` to test that path."""
    base = {"model.checkpoint": inputs["megatron"], "train.train_steps": steps, "train.global_batch_size": 4,
            "train.micro_batch_size": 1, "train.precision": "fp32", "optimizer.lr": 3e-3,
            "optimizer.min_lr": 3e-4, "optimizer.warmup_fraction": 0.0, "optimizer.weight_decay": 0.0,
            "checkpoint.save_interval": 0, "checkpoint.keep_last": 3, "logging.log_interval": 1,
            "logging.tensorboard": False, "data.num_workers": 0, **extra}
    return [f"data.train=[{{prefix: {inputs['data']}}}]"] + [f"{k}={v}" for k, v in base.items()]


def records(run_dir: Path) -> list[dict]:
    """The train records (not the validation ones) of ``run_dir/metrics.jsonl``; none before it is written."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r.get("split", "train") == "train"]


def rewind(run_dir: Path, iteration: int) -> None:
    """As if the run had crashed right after saving ``iteration``: later checkpoints are gone."""
    root = run_dir / "checkpoints"
    for d in root.glob("iter_*"):
        if int(d.name[5:]) > iteration:
            shutil.rmtree(d)
    (root / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")
