"""``longvlm train``: the step against an independent computation, parallel layouts against one
process, exact resume, resume at another layout, preemption, frozen parts, bad configs.

Runs use a tiny random Qwen2.5-VL (4 layers) and a small self-contained built dataset (pages copied
into it; rows of at most 512 tokens; answers of very different lengths), 3 steps each.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.distributed import REPO_ROOT, run_distributed
from helpers.training import records, rewind, train_overrides

from megatron_vlm.formats.checkpoint import MegatronCheckpoint

STEPS = 3


@pytest.fixture(scope="module")
def setup(train_inputs):
    """A tiny HF checkpoint (4 LM layers) and a copied-pages dataset whose packs differ in answer tokens."""
    return train_inputs


def overrides(setup, **extra) -> list[str]:
    return train_overrides(setup, STEPS, **extra)


def train(setup, run_dir: Path, nprocs: int = 1, timeout: float = 300, **extra) -> list[dict]:
    """Run ``longvlm train`` on ``nprocs`` processes; the train records of ``metrics.jsonl``."""
    args = ["train", "tiny-cpu", "-o", run_dir, *overrides(setup, **extra)]
    run_distributed("longvlm", nprocs, args, timeout=timeout)
    return records(run_dir)


def weights(run_dir: Path, iteration=None) -> dict[str, torch.Tensor]:
    ckpt = MegatronCheckpoint.open(run_dir / "checkpoints", iteration)
    names = [n for n in ckpt.shapes if n.startswith(("language_model.", "vision_model."))]
    from megatron_vlm.runtime import process_group

    with process_group():
        return ckpt.load(names)


@pytest.fixture(scope="module")
def reference(setup):
    """One process, 3 steps: the run every layout is compared with. It starts from the HF directory (converted
    into RUN_DIR/init), the others from the same weights converted once (``train_inputs["megatron"]``)."""
    run_dir = setup["tmp"] / "ref"
    return run_dir, train(setup, run_dir, **{"model.checkpoint": setup["hf"]})


def test_one_process_run_writes_everything_and_learns(setup, reference):
    run_dir, recs = reference
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in recs)
    assert recs[-1]["loss"] < recs[0]["loss"]
    for key in ("lr", "tokens", "step_time", "data_wait", "answer_tokens", "computed_tokens"):
        assert key in recs[0]
    assert recs[0]["lr"] == pytest.approx(3e-3) and recs[-1]["lr"] < recs[0]["lr"]  # cosine
    assert (run_dir / "config.yaml").is_file() and (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = MegatronCheckpoint.open(run_dir / "checkpoints")
    assert ckpt.iter_dir.name == "iter_0000003"
    assert MegatronCheckpoint.open(run_dir / "init").iter_dir.name == "iter_0000000"  # the HF start, converted once
    assert json.loads((ckpt.iter_dir / "longvlm.json").read_text())["hf_config"]["vision_config"]["depth"] == 4
    # rows train at their own length (padding only to the layout's multiple: none here)
    assert all(r["computed_tokens"] == r["tokens"] for r in recs)


def test_loss_is_the_mean_over_answer_tokens_of_the_global_batch(setup, reference):
    """Step 1's loss and gradient norm equal an independent computation with transformers' model on the
    same rows: sum of answer-token losses / answer tokens (not a mean of per-micro-batch means); the
step's model FLOPs are those of the same samples."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.data.loader import build_data_loader
    from megatron_vlm.flops import model_flops
    from megatron_vlm.models.qwen25vl.arch import Qwen25VLArch

    arch = Qwen25VLArch.from_hf(setup["hf"])
    _, recs = reference
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(setup["hf"], dtype=torch.float32)
    loader = build_data_loader(setup["data"], 1, seed=1234, total_samples=4, num_workers=0)
    sums, counts = [], []  # per micro-batch (= packed row): summed answer-token loss, answer tokens
    flops = 0.0  # model FLOPs of the rows as this test sees them: samples apart, output layer on answers only
    for batch in loader:
        ids, grids, pixels = batch["input_ids"][0], batch["image_grid_thw"], batch["pixel_values"]
        cu = batch["cu_seqlens"].tolist()
        row_sum, image, patch = 0.0, 0, 0
        for lo, hi in zip(cu[:-1], cu[1:]):  # each packed sample on its own, as transformers sees one sequence
            sample = ids[lo:hi][None]
            n_images = int(((sample[0] == 151655).int().diff() == 1).sum() + (sample[0, 0] == 151655))
            g = grids[image:image + n_images]
            n_patches = int(g.prod(1).sum()) if n_images else 0
            kw = {}
            if n_images:
                kw = dict(pixel_values=pixels[patch:patch + n_patches], image_grid_thw=g,
                          mm_token_type_ids=(sample == 151655).int())
            logits = hf(input_ids=sample, **kw).logits[0].float()
            per_token = torch.nn.functional.cross_entropy(logits, batch["labels"][0, lo:hi], reduction="none")
            row_sum = row_sum + (per_token * batch["loss_mask"][0, lo:hi]).sum()
            flops += model_flops(arch, [hi - lo], g.tolist(), int(batch["loss_mask"][0, lo:hi].sum())).total
            image, patch = image + n_images, patch + n_patches
        sums.append(row_sum)
        counts.append(batch["loss_mask"].sum())
    assert min(counts) * 5 < max(counts)  # micro-batches with very different answer-token counts
    token_mean = sum(sums) / sum(counts)
    mean_of_means = sum(s / c for s, c in zip(sums, counts)) / len(sums)
    assert abs(token_mean - mean_of_means) > 100 * 2e-4  # the two normalizations are told apart
    assert recs[0]["loss"] == pytest.approx(token_mean.item(), abs=2e-4)
    assert recs[0]["model_flops"] == pytest.approx(flops, rel=1e-12)
    assert recs[0]["tflops_per_gpu"] == pytest.approx(flops / recs[0]["step_time"] / 1e12, rel=1e-9)
    assert "mfu" not in recs[0]  # no GPU, no peak given
    token_mean.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in hf.parameters() if p.grad is not None))
    assert recs[0]["grad_norm"] == pytest.approx(norm.item(), rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dp2", "tp2_sp", "pp2", "cp2", "pp2_vpp2"])
def test_parallel_layouts_match_one_process(setup, reference, layout):
    ref_dir, ref = reference
    extra = {"dp2": {}, "tp2_sp": {"parallel.tp": 2, "parallel.sp": "true"},
             "pp2": {"parallel.pp": 2, "parallel.first_stage_layers": 1}, "cp2": {"parallel.cp": 2},
             "pp2_vpp2": {"parallel.pp": 2, "parallel.vpp": 2}}[layout]
    run_dir = setup["tmp"] / layout
    recs = train(setup, run_dir, nprocs=2, **extra)
    for a, b in zip(recs, ref, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-5), (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["model_flops"] == pytest.approx(b["model_flops"], rel=1e-12)  # all ranks' batches, no padding
    ours, theirs = weights(run_dir), weights(ref_dir)
    assert ours.keys() == theirs.keys()
    # Adam turns the rounding noise of near-zero gradients into updates of up to lr x steps (9e-3): all
    # elements within 1e-4 (about 1% of an update), and only a handful beyond 2e-5.
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-4, msg=name)
    beyond = sum(int(((ours[n] - theirs[n]).abs() > 2e-5).sum()) for n in ours)
    assert beyond <= 1e-4 * sum(t.numel() for t in ours.values())


@pytest.mark.slow
def test_tp2_cp2_on_four_processes_matches_one_process(setup, reference):
    ref_dir, ref = reference
    recs = train(setup, setup["tmp"] / "tp2cp2", nprocs=4, timeout=600,
                 **{"parallel.tp": 2, "parallel.cp": 2, "parallel.sp": "true", "train.global_batch_size": 4})
    for a, b in zip(recs, ref, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-5)


@pytest.mark.slow
def test_resume_is_exact(setup, reference):
    """1 step, save, resume, 2 more steps == 3 uninterrupted steps, bitwise."""
    _, ref = reference
    run_dir = setup["tmp"] / "resume"
    train(setup, run_dir, **{"checkpoint.save_interval": 1})
    rewind(run_dir, 1)
    recs = train(setup, run_dir, **{"checkpoint.save_interval": 1})
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert [r["loss"] for r in recs] == [r["loss"] for r in ref]
    assert [r["grad_norm"] for r in recs] == [r["grad_norm"] for r in ref]


@pytest.mark.slow
def test_resume_at_another_layout(setup, reference):
    """Saved at TP1 after step 1, resumed at TP2+SP on 2 processes: model and optimizer resharded."""
    _, ref = reference
    run_dir = setup["tmp"] / "relayout"
    train(setup, run_dir, **{"checkpoint.save_interval": 1})
    rewind(run_dir, 1)
    recs = train(setup, run_dir, nprocs=2, **{"checkpoint.save_interval": 1, "parallel.tp": 2, "parallel.sp": "true"})
    for a, b in zip(recs[1:], ref[1:], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-5)


@pytest.mark.slow
def test_sigterm_saves_then_resumes_and_exports(setup, tmp_path):
    """SIGTERM mid-run: the step finishes, a checkpoint is saved, exit 75; a rerun resumes and finishes; the
    checkpoint exports to a directory transformers loads."""
    from longvlm import api

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "longvlm", "train", "tiny-cpu", "-o", str(run_dir),
           *overrides(setup, **{"train.train_steps": 200})]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 75, err[-3000:]
    saved = MegatronCheckpoint.open(run_dir / "checkpoints")
    step = int(saved.iter_dir.name[5:])
    assert step == len(records(run_dir)) and "SIGTERM: saved step" in out
    recs = train(setup, run_dir, **{"train.train_steps": step + 1})
    assert [r["step"] for r in recs] == list(range(1, step + 2))
    hf = api.convert("megatron-to-hf", ckpt=str(run_dir / "checkpoints"), out=str(tmp_path / "hf"),
                     hf_template=str(setup["hf"]))
    assert (hf.out / "config.json").is_file()
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf.out)
    trained = weights(run_dir)["language_model.decoder.final_layernorm.weight"]
    torch.testing.assert_close(model.model.language_model.norm.weight, trained)


@pytest.mark.slow
def test_frozen_parts_do_not_change(setup):
    from megatron_vlm.runtime import process_group

    run_dir = setup["tmp"] / "frozen"
    train(setup, run_dir, **{"model.train_vision": "false", "train.train_steps": 1})
    after = weights(run_dir)
    with process_group():
        before = MegatronCheckpoint.open(setup["megatron"]).load(list(after))  # where the run started
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    tower = {n for n in after if n.startswith(("vision_model.decoder.", "vision_model.patch_embed."))}
    assert tower and not changed & tower
    assert any(n.startswith("vision_model.merger.") for n in changed)  # the merger still trains
    assert any(n.startswith("language_model.") for n in changed)


@pytest.mark.slow
def test_config_yaml_reproduces_the_run_bitwise(setup, reference):
    ref_dir, ref = reference
    run_dir = setup["tmp"] / "again"
    run_distributed("longvlm", 1, ["train", ref_dir / "config.yaml", "-o", run_dir])  # the reference's launcher
    assert [r["loss"] for r in records(run_dir)] == [r["loss"] for r in ref]


@pytest.mark.slow
def test_validation_keep_last_and_tensorboard(setup):
    run_dir = setup["tmp"] / "valid"
    recs = train(setup, run_dir, **{"data.valid": setup["data"], "logging.eval_interval": 1,
                                    "logging.eval_batches": 2, "checkpoint.save_interval": 1,
                                    "checkpoint.keep_last": 2, "logging.tensorboard": "true",
                                    "logging.peak_tflops": 0.5})
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in lines if r.get("split") == "valid"]
    assert [r["step"] for r in valid] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in valid)
    assert valid[-1]["loss"] < valid[0]["loss"]  # same rows every pass: the model learned them
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("iter_*")) == ["iter_0000002", "iter_0000003"]
    assert not list((run_dir / "checkpoints").glob(".iter_*"))
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and len(recs) == 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([r["loss"] for r in recs])
    # MFU against the given peak: model FLOPs / step time / ranks / peak
    assert [r["mfu"] for r in recs] == pytest.approx([r["model_flops"] / r["step_time"] / 0.5e12 for r in recs])
    assert [e.value for e in acc.Scalars("train/mfu")] == pytest.approx([r["mfu"] for r in recs], rel=1e-6)


def test_progress_line_tflops_and_mfu(tmp_path, capsys):
    """TFLOP/s per GPU = model FLOPs / step time / world size; MFU = that / the peak (hand numbers)."""
    from training.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, 2, enabled=True, tensorboard=False, log_interval=1, world_size=8,
                           peak_flops=500e12)
    record = {"step": 1, "loss": 2.0, "lr": 1e-5, "grad_norm": 0.5, "tokens": 262144, "step_time": 4.0,
              "data_wait": 0.0, "model_flops": 8 * 4.0 * 200e12, "max_memory_gib": 61.25}
    logger.step(record)
    assert record["tflops_per_gpu"] == pytest.approx(200.0) and record["mfu"] == pytest.approx(0.4)
    line = capsys.readouterr().out
    assert "MFU 40.0%" in line and "peak mem 61.2 GiB" in line and "65,536 tok/s" in line
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["mfu"] == pytest.approx(0.4)
    (tmp_path / "cpu").mkdir()
    cpu = MetricsLogger(tmp_path / "cpu", 2, enabled=True, tensorboard=False, log_interval=1, device="process")
    cpu.step({k: v for k, v in record.items() if k not in ("mfu", "tflops_per_gpu", "max_memory_gib")})
    assert "TFLOP/s/process" in capsys.readouterr().out  # no GPU peak: TFLOP/s, per process on CPUs


def test_mfu_peak_of_the_gpu_by_its_name():
    from megatron_vlm.hardware import GPUS, gpu_preset

    assert gpu_preset("NVIDIA H100 80GB HBM3") is GPUS["h100"] and gpu_preset("NVIDIA H200") is GPUS["h200"]
    assert gpu_preset("NVIDIA A100-SXM4-80GB") is GPUS["a100"]
    assert gpu_preset("NVIDIA GeForce RTX 4090") is None  # unlisted: TFLOP/s only, or logging.peak_tflops
    assert GPUS["h100"].peak_flops("bf16") == 989.4e12


def test_nan_loss_stops_with_the_step_and_its_samples(setup, capsys):
    from longvlm.cli import main

    run_dir = setup["tmp"] / "nan"
    args = overrides(setup, **{"optimizer.lr": 1e30, "optimizer.clip_grad": 0.0, "train.train_steps": 3})
    assert main(["train", "tiny-cpu", "-o", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert "step 2: loss is nan" in err and "samples: tasks.jsonl:" in err and "guard.on_nan" in err


def test_tiny_recipe_run_outside_the_demo_folder_says_where_it_looked(tmp_path, monkeypatch, capsys):
    from longvlm.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "tiny-cpu"]) == 2
    err = capsys.readouterr().err
    assert f"not found in {tmp_path} ({tmp_path}/demo_out/hf_tiny)" in err
    assert "longvlm train tiny-cpu model.checkpoint=X/hf_tiny 'data.train=[{prefix: X/data/longpt}]'" in err
    assert not (tmp_path / "runs").exists()


BAD_CONFIGS = [  # (overrides, world size, message)
    ({"parallel.tp": 3}, 3, "4 attention heads / 2 query groups do not divide over tp=3"),
    ({"parallel.pp": 3}, 3, "4 language-model layers do not divide over pp*vpp=3 stages"),
    ({"train.global_batch_size": 3}, 2, "not a multiple of micro_batch_size x data-parallel size = 1 x 2"),
    ({"parallel.tp": 4}, 2, "world size 2 is not a multiple of tp*pp*cp = 4*1*1 = 4"),
    ({"model.rope.target_length": 256}, 1, "longer than the model's context length 256"),
    ({"train.seq_length": 256}, 1, "shorter than the datasets' rows"),
    ({"model.checkpoint": "/nonexistent/model"}, 1, "model.checkpoint=/nonexistent/model: does not exist"),
    ({"train.precision": "bf16"}, 1, "train.precision=bf16 needs a GPU"),
    ({"train.precision": "fp8"}, 1, "train.precision=fp8 needs model.transformer_impl=te"),
    ({"train.precision": "fp8", "model.transformer_impl": "te"}, 1, "train.precision=fp8 needs a GPU"),
    ({"model.attention_backend": "te"}, 1, "model.attention_backend=te needs Transformer Engine"),
    ({"model.transformer_impl": "te"}, 1, "model.transformer_impl=te needs Transformer Engine"),
    ({"parallel.cp": 2, "parallel.cp_comm_type": "p2p"}, 2, "parallel.cp_comm_type=p2p is Transformer Engine's"),
    ({"parallel.cp_comm_type": "ring"}, 1, "parallel.cp_comm_type='ring' is not one of"),
    ({"model.recompute": "selective", "model.recompute_modules": "[]"}, 1, "with no model.recompute_modules"),
    ({"model.recompute_modules": "[attn]"}, 1, "model.recompute_modules='attn' is not one of"),
    ({"optimizer.lrr": 1}, 1, "Key 'lrr' not in 'OptimizerSettings'"),
    ({"optimizer.lr": "fast"}, 1, "key 'optimizer.lr'"),
    ({"optimizer.schedule": "step"}, 1, "optimizer.schedule='step' is not one of"),
]


@pytest.mark.parametrize("bad, world, message", BAD_CONFIGS, ids=[m[:30] for _, _, m in BAD_CONFIGS])
def test_bad_configs_fail_before_any_work(setup, tmp_path, capsys, monkeypatch, bad, world, message):
    from longvlm.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world))  # as torchrun starts it: nothing may start a process group
    run_dir = tmp_path / "run"
    assert main(["train", "tiny-cpu", "-o", str(run_dir), *overrides(setup, **bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longvlm train: error: ") and message in err, err
    assert "Traceback" not in err and not run_dir.exists()
    assert not torch.distributed.is_initialized()


def test_dataset_of_another_tokenizer_is_refused(setup, tmp_path, capsys, qwen_tokenizer_dir):
    from longvlm.cli import main

    model = tmp_path / "model"
    shutil.copytree(setup["hf"], model)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        shutil.copy(qwen_tokenizer_dir / name, model / name)
    (model / "merges.txt").write_text((model / "merges.txt").read_text() + "\n")  # another tokenizer
    assert main(["train", "tiny-cpu", "-o", str(tmp_path / "run"),
                 *overrides(setup, **{"model.checkpoint": model})]) == 2
    err = capsys.readouterr().err
    assert "built with another tokenizer than the model's (merges.txt differ" in err


@pytest.mark.parametrize("change", ["gone", "other ids"])
def test_model_without_tokenizer_files_is_checked_against_the_recorded_tokenizer(setup, tmp_path, capsys,
                                                                                  qwen_tokenizer_dir, change):
    """The tiny model has no tokenizer files: the tokenizer the dataset recorded must still be there and put the
    vision tokens at the model's ids (config.json's image_token_id, ...), else the run is refused before any work."""
    from longvlm.cli import main
    from megatron_vlm.utils.hashing import sha256_file

    data = setup["data"]
    meta = json.loads(Path(f"{data}.json").read_text())
    shutil.copytree(data.parent / meta["files_dir"], tmp_path / meta["files_dir"])
    tokenizer = tmp_path / "tokenizer"
    if change == "other ids":  # another tokenizer: the image and video pad tokens swapped
        shutil.copytree(qwen_tokenizer_dir, tokenizer)
        spec = json.loads((tokenizer / "tokenizer.json").read_text())
        pads = {t["content"]: t for t in spec["added_tokens"] if t["content"] in ("<|image_pad|>", "<|video_pad|>")}
        pads["<|image_pad|>"]["content"], pads["<|video_pad|>"]["content"] = "<|video_pad|>", "<|image_pad|>"
        (tokenizer / "tokenizer.json").write_text(json.dumps(spec))
        meta["inputs"]["tokenizer"]["sha256"] = {n: sha256_file(tokenizer / n) for n in meta["inputs"]["tokenizer"]["sha256"]}
    meta["inputs"]["tokenizer"]["path"] = str(tokenizer)
    Path(tmp_path / "data.json").write_text(json.dumps(meta))
    args = overrides(setup) + [f"data.train=[{{prefix: {tmp_path / 'data'}}}]"]
    assert main(["train", "tiny-cpu", "-o", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    expected = "is gone or changed" if change == "gone" else "<|image_pad|> is 151656, the model's 151655"
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_dataset_built_for_another_family_is_refused(setup, tiny_qwen3vl_checkpoint, capsys):
    """A Qwen3-VL model with a dataset built for Qwen2.5-VL: refused before any work, saying how to rebuild."""
    from longvlm.cli import main

    assert main(["train", "tiny-cpu", "-o", str(setup["tmp"] / "other_family"),
                 *overrides(setup, **{"model.checkpoint": tiny_qwen3vl_checkpoint})]) == 2
    err = capsys.readouterr().err
    assert "the dataset was built for qwen2_5_vl, the model is qwen3_vl" in err
    assert "longvlm build --family qwen3_vl" in err and not (setup["tmp"] / "other_family").exists()


def test_vision_parameters_get_a_gradient_without_images(megatron_single):
    """A text-only micro-batch still gives every trainable vision parameter a (zero) gradient, so gradient
    buckets that wait for every parameter are complete."""
    from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf
    from megatron_vlm.models.qwen25vl.model import Qwen25VLModel
    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    model = Qwen25VLModel(qwen25vl_config_from_hf(tiny_qwen25vl_config().to_dict()))
    ids = torch.randint(0, 1000, (1, 16))
    loss = model(ids, labels=ids, loss_mask=torch.ones(1, 16))
    loss.sum().backward()
    vision = list(model.vision_model.parameters())
    assert vision and all(p.grad is not None and not p.grad.any() for p in vision)
    assert any(p.grad.abs().sum() > 0 for p in model.language_model.parameters())
