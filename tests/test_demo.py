"""``longvlm demo`` end to end: every stage runs and the trained model survives the HF export."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from longvlm import api
from longvlm.cli import main


@pytest.mark.slow
def test_demo_runs_every_stage_and_the_export_reproduces_the_trained_model(pdf_dir, tmp_path):
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for name in ("float.pdf", "booktabs.pdf", "camlidl-1.04.doc.pdf"):
        shutil.copy(pdf_dir / name, pdfs / name)
    out = tmp_path / "demo"
    records = api.demo(output=str(out), pdfs=str(pdfs), train_steps=6, token_budget=5e4)  # 3 PDFs: < 4 repeats
    assert [r.name for r in records] == [
        "pool", "synth", "build", "stats", "tiny model", "convert hf-to-megatron", "convert verify",
        "train", "convert megatron-to-hf", "exported == trained"]
    manifest = [json.loads(line) for line in (out / "pool" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(d["num_pages"] for d in manifest) == [12, 18, 26]
    assert (out / "lengths.png").stat().st_size > 0
    run = out / "train"
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.05
    assert (run / "loss.png").stat().st_size > 0
    from megatron_vlm.formats.checkpoint import MegatronCheckpoint
    from megatron_vlm.runtime import process_group

    with process_group():
        before, after = MegatronCheckpoint.open(out / "megatron"), MegatronCheckpoint.open(run / "checkpoints")
        name = "language_model.decoder.final_layernorm.weight"
        assert not torch.equal(before.load([name])[name], after.load([name])[name])  # training changed the model
    exported = json.loads((out / "hf_trained" / "config.json").read_text())
    assert exported["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert "PASS" in records[6].result  # the converted checkpoint gives transformers' logits
    assert float(records[-1].result.rsplit(" ", 1)[1]) <= 1e-4  # and so does the trained one, after export
    # a rerun replaces its own directory; a directory that is not the demo's is refused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    assert main(["demo", "-o", str(tmp_path / "mine"), "--pdfs", str(pdfs)]) == 2
    assert (tmp_path / "mine" / "keep.txt").exists()


@pytest.mark.parametrize("budget", ["nan", "inf", "0"])
def test_bad_token_budget_is_refused_before_any_stage(tmp_path, capsys, budget):
    assert main(["demo", "-o", str(tmp_path / "d"), f"--token-budget={budget}"]) == 2
    err = capsys.readouterr().err
    assert "--token-budget must be a finite number of at least 1 token" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # no pool, no synth
