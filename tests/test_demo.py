"""``longvlm demo`` end to end, for each model family: every stage runs, training changes the model and lowers
the loss, and the trained model survives the HF export."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from helpers.checkpoints import hf_tensors, megatron_tensors

from longvlm import api
from longvlm.cli import main

pytestmark = pytest.mark.slow

STEPS = 6


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_demo_trains_and_the_export_reproduces_the_trained_model(pdf_dir, tmp_path, family):
    from megatron_vlm.models.registry import get_family
    from training.metrics import read_metrics

    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for name in ("float.pdf", "booktabs.pdf", "camlidl-1.04.doc.pdf"):
        shutil.copy(pdf_dir / name, pdfs / name)
    out = tmp_path / "demo"
    records = api.demo(output=str(out), pdfs=str(pdfs), train_steps=STEPS, token_budget=5e4,  # 3 PDFs: < 4 repeats
                       family=family)
    assert [r.name for r in records] == [
        "pool", "synth", "build", "stats", "tiny model", "convert hf-to-megatron", "convert verify",
        "train", "convert megatron-to-hf", "exported == trained"]
    manifest = [json.loads(line) for line in (out / "pool" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(d["num_pages"] for d in manifest) == [12, 18, 26]
    assert (out / "lengths.png").stat().st_size > 0
    assert "PASS" in records[6].result  # the converted checkpoint gives transformers' logits

    # training ran every step with finite, falling losses and changed every weight
    run = out / "train"
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r.get("split", "train") == "train"]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05, losses
    assert (run / "loss.png").stat().st_size > 0
    ckpt = run / "checkpoints"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(STEPS)
    before, after = megatron_tensors(out / "megatron"), megatron_tensors(ckpt)
    weights = [n for n in before if n.startswith(("language_model.", "vision_model.")) and "_extra_state" not in n]
    unchanged = [n for n in weights if (after[n] - before[n]).abs().max() == 0]
    assert weights and not unchanged, unchanged

    # the export is the trained model (not the initial one), and transformers on it gives the
    # trained Megatron model's logits
    exported, initial = hf_tensors(out / "hf_trained"), hf_tensors(out / "hf_tiny")
    assert exported.keys() == initial.keys()
    assert all((exported[n] - initial[n]).abs().max() > 0 for n in exported)
    assert json.loads((out / "hf_trained" / "config.json").read_text())["architectures"] == [
        get_family(family).hf_class]
    pool_options = json.loads((out / "pool" / "pool.json").read_text())["settings"]["options"]
    factor = get_family(family).geometry.factor  # the pool was rendered for the family
    assert pool_options["family"] == family and all(
        p["width"] % factor == 0 == p["height"] % factor for d in manifest for p in d["pages"])
    assert float(records[-1].result.rsplit(" ", 1)[1]) <= 1e-4

    # a rerun replaces its own directory; a directory that is not the demo's is refused
    if family != "qwen2_5_vl":
        return
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    assert main(["demo", "-o", str(tmp_path / "mine"), "--pdfs", str(pdfs)]) == 2
    assert (tmp_path / "mine" / "keep.txt").exists()
