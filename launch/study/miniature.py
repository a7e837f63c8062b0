"""An experiment of the study in miniature (``longvlm demo --study NAME``): the same file, inherited,
with the scale changed so it runs on one CPU in minutes.

Kept from the experiment: which tasks, the mixture, the length distribution, short data and its
share, page markers, the training overrides (e.g. the RoPE base), whether an SFT phase follows.
Changed: the offline QA generator (no model server), rows of ``seq_length`` tokens (the built-in
length bins scale with it, so "long-biased" still means near-maximum-length rows), a small token
budget, the tiny model with the ``tiny-cpu`` recipe, and the evaluation: docqa by teacher forcing on
held-out synthesized questions at two context lengths (the benchmarks need their own files and a
real model). Short instruction data is made from the pool's own pages (a LLaVA JSON file).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from launch.study.experiment import StudyError, raw_experiment

STUDY_RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes" / "study"


def experiment_file(name: str) -> Path:
    """``recipes/study/NAME.yaml``; a StudyError listing the names otherwise."""
    path = STUDY_RECIPES / f"{name}.yaml"
    if name.startswith("_") or not path.is_file():
        known = sorted(p.stem for p in STUDY_RECIPES.glob("*.yaml") if not p.stem.startswith("_"))
        raise StudyError(f"--study {name}: no such experiment; choose from {', '.join(known)}")
    return path


def write_short_data(pool_dir: str | Path, out: Path, pages_per_doc: int = 4) -> Path:
    """A LLaVA-style JSON of one-image questions about the pool's pages (first text line of the page)."""
    import json

    from megatron_vlm.formats.pool import Pool
    from preprocess.synth.layout import page_text

    pool = Pool.open(pool_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for doc in pool.documents:
        for page in range(1, min(pages_per_doc, doc["num_pages"]) + 1):
            text = page_text(pool.page_blocks(doc["doc_id"], page)).split("\n")[0].strip()[:120]
            if not text or "<" in text:
                continue
            name = f"{doc['doc_id'][:12]}-{page}.png"
            (images / name).write_bytes(pool.page_bytes(doc["doc_id"], page))
            records.append({"id": f"{doc['doc_id'][:12]}-{page}", "image": f"images/{name}", "conversations": [
                {"from": "human", "value": "<image>\nWhat is the first line of text on this page?"},
                {"from": "gpt", "value": text}]})
    path = out / "short.json"
    path.write_text(json.dumps(records))
    return path


def miniature_file(name: str, out: Path, *, inputs: dict, eval_tasks: Path, seq_length: int, token_budget: float,
                   train_steps: int, seed: int) -> Path:
    """Write ``out/NAME.yaml``: experiment NAME at the demo's scale (see the module docstring)."""
    source = experiment_file(name)
    original = raw_experiment(source)
    overrides = lambda key: list(OmegaConf.select(original, key, default=None) or [])  # noqa: E731
    scale = {"seq_length": seq_length, "token_budget": token_budget, "max_repeats": 1000.0, "workers": 1}
    steps = [f"train.train_steps={train_steps}", f"train.seed={seed}"]
    mini = {
        "inherit": str(source), "name": original.name, "inputs": inputs,
        "synth": {"generator": "offline", "model": None, "per_doc": 1, "seed": seed},
        "build": {**scale, "seed": seed},
        "train": {"recipe": "tiny-cpu", "overrides": [*overrides("train.overrides"), *steps]},
        "eval": [{"name": "docqa", "task": "docqa", "options": {
            "input": str(eval_tasks), "pool": inputs["pool"], "backend": "hf", "scoring": "teacher-forcing",
            "device": "cpu", "context_lengths": [str(seq_length // 2), str(seq_length)]}}],
    }
    if OmegaConf.select(original, "sft", default=None) is not None:
        mini["sft"] = {"build": {**scale, "token_budget": min(token_budget, 3e4), "seed": seed},
                       "train": {"recipe": "tiny-cpu", "overrides": [*overrides("sft.train.overrides"), *steps]}}
    path = out / f"{name}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {name} in miniature (longvlm demo --study); the experiment is {source}\n"
                    + yaml.safe_dump(mini, sort_keys=False))
    return path
