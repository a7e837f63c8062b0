"""Converted checkpoints in the Megatron model: logits equal transformers' at TP/PP in {1,2}x{1,2}."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.checkpoints import assert_bit_exact, hf_tensors, random_checkpoint
from helpers.distributed import run_distributed

from longvlm import api
from longvlm.cli import main

TOL = 1e-4  # fp32; transformers and megatron-core order their reductions differently


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("random_hf") / "hf", seed=1)


@pytest.fixture(scope="module")
def converted(hf_dir, convert_to_megatron):
    return lambda tp, pp: convert_to_megatron(hf_dir, tp, pp)


def test_verify_megatron_model_matches_transformers(hf_dir, converted, capsys):
    """The model's parity harness in one command: built-in probe of three images and text."""
    assert main(["convert", "verify", "--hf", str(hf_dir), "--ckpt", str(converted(1, 1)), "--json",
                 "--atol", str(TOL)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["passed"] and result["max_abs_diff"] <= TOL
    assert result["top1_agreement"] == 1.0 and result["images"] == 3 and result["tokens"] > 43


def test_verify_fails_on_a_checkpoint_of_other_weights(hf_dir, tmp_path, capsys):
    other = random_checkpoint(tmp_path / "other_hf", seed=2)
    api.convert("hf-to-megatron", hf=str(other), out=str(tmp_path / "meg"))
    assert main(["convert", "verify", "--hf", str(hf_dir), "--ckpt", str(tmp_path / "meg"), "--json"]) == 1
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not result["passed"] and result["max_abs_diff"] > 1.0


@pytest.fixture(scope="module")
def reference(hf_dir, qwen_tokenizer_dir, tmp_path_factory):
    """Probe inputs, labels and transformers' logits, saved for the distributed workers."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from checkpoint_tools.verify import build_probe
    from megatron_vlm.models.registry import read_arch

    inputs = build_probe(qwen_tokenizer_dir, read_arch(hf_dir))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(**inputs).logits
    labels = torch.randint(0, 1000, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("reference") / "reference.pt"
    torch.save({**inputs, "logits": logits, "labels": labels}, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)])
def test_converted_checkpoint_loads_at_tp_pp_with_transformers_logits(hf_dir, converted, reference, tmp_path, tp, pp):
    """Plain ``dist_checkpointing.load(model.sharded_state_dict())`` at the layout; then the model's
    own save (what training writes: its TP shards, stacked layers, unpadded vocabulary) exports
    bit-exactly."""
    ckpt, saved = converted(tp, pp), tmp_path / "trained"
    run_distributed("tests/workers/convert_load.py", tp * pp,
                    ["--ckpt", ckpt, "--reference", reference, "--out", tmp_path, "--tp", tp, "--pp", pp,
                     "--save", saved], timeout=400)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(tp * pp)]
    assert sum(r["layers"] for r in results) == 4 * tp  # each TP group holds all 4 layers once
    checked = [r.get("logits", r.get("loss")) for r in results if "logits" in r or "loss" in r]
    assert checked and max(checked) <= TOL, results
    api.convert("megatron-to-hf", ckpt=str(saved), out=str(tmp_path / "exported"))
    assert_bit_exact(hf_tensors(hf_dir), hf_tensors(tmp_path / "exported"))


def test_verify_catches_the_classic_vision_qkv_mistake(hf_dir, converted, tmp_path):
    """One vision block's qkv left in HF's stacked [Q; K; V] order (the usual port bug) fails verify."""
    import shutil

    from megatron_vlm.formats.checkpoint import (
        META_NAME,
        MegatronCheckpoint,
        save_global_tensors,
        write_tracker,
    )
    from megatron_vlm.runtime import process_group

    src = converted(1, 1)
    hf = hf_tensors(hf_dir)
    with process_group():
        ckpt = MegatronCheckpoint.open(src)
        tensors = ckpt.load([n for n in ckpt.shapes if n.startswith(("language_model.", "vision_model."))])
        tensors["vision_model.decoder.layers.1.self_attention.linear_qkv.weight"] = hf["visual.blocks.1.attn.qkv.weight"]
        save_global_tensors(tensors, tmp_path / "bad" / "iter_0000000")
    shutil.copy(ckpt.iter_dir / META_NAME, tmp_path / "bad" / "iter_0000000" / META_NAME)
    write_tracker(tmp_path / "bad", 0)
    result = api.convert("verify", hf=str(hf_dir), ckpt=str(tmp_path / "bad"), atol=TOL)
    assert not result.passed and result.max_abs_diff > 100 * TOL


def test_verify_takes_user_images_and_prompt(hf_dir, converted, tmp_path, capsys):
    from PIL import Image

    paths = []
    for k, size in enumerate([(60, 90), (200, 120)]):
        paths += ["--image", str(tmp_path / f"img{k}.png")]
        Image.new("RGB", size, (40 * k, 200, 90)).save(paths[-1])
    assert main(["convert", "verify", "--hf", str(hf_dir), "--ckpt", str(converted(1, 1)), *paths,
                 "--prompt", "What colour is the page?", "--json", "--atol", str(TOL)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 2 and result["passed"]
    assert main(["convert", "verify", "--hf", str(hf_dir), "--ckpt", str(converted(1, 1)),
                 "--image", str(tmp_path / "missing.png")]) == 2
    assert "missing.png: cannot read it" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    """A custom Qwen2.5-VL of 512 token ids (special ids 500-503), without a tokenizer of its own."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    config = tiny_qwen25vl_config(vocab_size=512)
    config.vision_start_token_id, config.vision_end_token_id = 500, 501
    config.image_token_id, config.video_token_id = 502, 503
    torch.manual_seed(3)
    hf = tmp_path_factory.mktemp("small_vocab") / "hf"
    Qwen2_5_VLForConditionalGeneration(config).eval().save_pretrained(hf)
    meg = hf.parent / "meg"
    api.convert("hf-to-megatron", hf=str(hf), out=str(meg))
    return hf, meg


def test_verify_without_a_tokenizer_builds_the_probe_from_config_ids(small_vocab, capsys):
    hf, meg = small_vocab
    assert not (hf / "tokenizer_config.json").exists()
    assert main(["convert", "verify", "--hf", str(hf), "--ckpt", str(meg), "--json", "--atol", str(TOL)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["passed"] and result["images"] == 3 and result["tokens"] == 24 + 3 * 2 + 4 + 15 + 24


def test_verify_refuses_a_tokenizer_that_does_not_fit_with_exit_2(small_vocab, qwen_tokenizer_dir, tmp_path, capsys):
    import shutil

    hf, meg = small_vocab
    wrong = tmp_path / "hf"
    shutil.copytree(hf, wrong)
    for f in qwen_tokenizer_dir.iterdir():  # the full Qwen tokenizer: ids up to 151,664
        shutil.copy(f, wrong / f.name)
    assert main(["convert", "verify", "--hf", str(wrong), "--ckpt", str(meg)]) == 2
    err = capsys.readouterr().err
    assert "its tokenizer does not fit the model" in err and "<|image_pad|> is id 151655" in err
    assert "vocabulary has 512" in err and "Traceback" not in err
