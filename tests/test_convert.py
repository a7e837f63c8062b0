"""``longvlm convert``: file-level round trips, the Megatron layout, the HF export, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import assert_bit_exact, hf_tensors, megatron_tensors, random_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from longvlm import api
from longvlm.cli import main

EMB = "language_model.embedding.word_embeddings.weight"


@pytest.fixture(scope="module")
def converted(tiny_hf_checkpoint, convert_to_megatron):
    """Megatron checkpoints of the tiny model per (tp, pp), converted once."""
    return lambda tp, pp: convert_to_megatron(tiny_hf_checkpoint, tp, pp)


@pytest.mark.parametrize("tp,pp", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_hf_megatron_hf_round_trip_is_bit_exact(converted, tiny_hf_checkpoint, tmp_path, monkeypatch, tp, pp):
    from checkpoint_tools import engine

    monkeypatch.setattr(engine, "LOAD_BATCH_BYTES", 40_000)  # layers of one stacked key in several loads
    ckpt = converted(tp, pp)
    meta = json.loads((ckpt / "iter_0000000" / "longvlm.json").read_text())
    assert meta["layout"]["tp"] == tp and meta["layout"]["pp"] == pp
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    out = tmp_path / "hf"
    result = api.convert("megatron-to-hf", ckpt=str(ckpt), out=str(out), max_shard_size="20MB")
    assert_bit_exact(hf_tensors(tiny_hf_checkpoint), hf_tensors(out))
    assert result.tensors == len(hf_tensors(out))
    assert json.loads((out / "config.json").read_text()) == json.loads((tiny_hf_checkpoint / "config.json").read_text())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(hf_tensors(out)) and len(set(index["weight_map"].values())) > 1
    for name, shard in index["weight_map"].items():
        with safe_open(out / shard, framework="pt") as f:
            assert name in f.keys()


def test_megatron_layout_matches_a_hand_computation(converted, tiny_hf_checkpoint):
    """Fused QKV per query group, vision [q_h; k_h; v_h] per head, [gate; up], vocab padded to 128*TP."""
    hf, meg = hf_tensors(tiny_hf_checkpoint), megatron_tensors(converted(2, 1))
    heads, groups, d = 4, 2, 16
    q, k, v = (hf[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    rows = []
    for g in range(groups):
        for h in range(g * heads // groups, (g + 1) * heads // groups):
            rows += [q[h * d + r] for r in range(d)]
        rows += [k[g * d + r] for r in range(d)] + [v[g * d + r] for r in range(d)]
    assert torch.equal(meg["language_model.decoder.layers.1.self_attention.linear_qkv.weight"], torch.stack(rows))

    vh, vd = 2, 16
    qkv_b = hf["visual.blocks.2.attn.qkv.bias"]
    expected = [qkv_b[part * vh * vd + h * vd + r] for h in range(vh) for part in range(3) for r in range(vd)]
    assert torch.equal(meg["vision_model.decoder.layers.2.self_attention.linear_qkv.bias"], torch.stack(expected))

    fc1 = meg["language_model.decoder.layers.0.mlp.linear_fc1.weight"]
    assert torch.equal(fc1[:128], hf["model.layers.0.mlp.gate_proj.weight"])
    assert torch.equal(fc1[128:], hf["model.layers.0.mlp.up_proj.weight"])

    emb = meg[EMB]
    assert emb.shape[0] == 152064 and emb.shape[0] % 256 == 0  # 151936 padded to a multiple of 128 * TP=2
    assert torch.equal(emb[:151936], hf["model.embed_tokens.weight"]) and not emb[151936:].any()
    assert megatron_tensors(converted(1, 1))[EMB].shape[0] == 151936  # already a multiple of 128


@pytest.fixture(scope="module")
def probe_inputs(qwen_tokenizer_dir, tiny_hf_checkpoint):
    from checkpoint_tools.verify import build_probe
    from megatron_vlm.models.registry import read_arch

    return build_probe(qwen_tokenizer_dir, read_arch(tiny_hf_checkpoint))


def hf_logits(path: Path, inputs: dict) -> torch.Tensor:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(**inputs).logits


def _sgd_step_in_transformers(hf_dir: Path, inputs: dict, labels: torch.Tensor, lr: float):
    """transformers' model of ``hf_dir`` after one SGD step on the summed token loss of ``inputs``."""
    import torch.nn.functional as F
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    F.cross_entropy(model(**inputs).logits[0], labels[0], reduction="sum").backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    return model


def _sgd_step_in_megatron(ckpt: Path, out: Path, inputs: dict, labels: torch.Tensor, lr: float) -> None:
    """Load ``ckpt`` into the Megatron model, take the same SGD step, save it as training does."""
    from megatron_vlm.formats.checkpoint import MegatronCheckpoint, load_into_model, save_model
    from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf
    from megatron_vlm.models.qwen25vl.model import Qwen25VLModel
    from megatron_vlm.runtime import process_group

    with process_group():
        src = MegatronCheckpoint.open(ckpt)
        model = Qwen25VLModel(qwen25vl_config_from_hf(src.meta["hf_config"])).eval()
        load_into_model(model, src)
        model(**{k: inputs[k] for k in ("input_ids", "pixel_values", "image_grid_thw")}, labels=labels).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        save_model(model, out, 1, src.meta["source"])


def test_export_of_a_trained_checkpoint_gives_transformers_the_trained_model(probe_inputs, tmp_path):
    """O(1) weights; one SGD step taken by the Megatron model on the converted checkpoint, saved and
    exported; transformers on the export == transformers on the original HF checkpoint after the same
    step taken in transformers (an independent forward and backward), and the step moved the logits."""
    src = random_checkpoint(tmp_path / "hf", seed=3)
    labels = torch.randint(0, 1000, probe_inputs["input_ids"].shape, generator=torch.Generator().manual_seed(4))
    lr = 1e-3
    api.convert("hf-to-megatron", hf=str(src), out=str(tmp_path / "meg"))
    _sgd_step_in_megatron(tmp_path / "meg", tmp_path / "trained", probe_inputs, labels, lr)
    api.convert("megatron-to-hf", ckpt=str(tmp_path / "trained"), out=str(tmp_path / "exported"))
    assert (probe_inputs["mm_token_type_ids"] == 1).sum() > 0  # the probe really has images
    stepped = _sgd_step_in_transformers(src, probe_inputs, labels, lr)
    with torch.no_grad():
        expected = stepped(**probe_inputs).logits
    before, got = hf_logits(src, probe_inputs), hf_logits(tmp_path / "exported", probe_inputs)
    assert (expected - before).abs().max().item() > 1.0  # the step changed the model visibly
    assert (got - expected).abs().max().item() <= 1e-4  # measured 3e-6 (the step moves logits by ~5)


@pytest.mark.parametrize("tp,overrides", [
    (1, dict(tie_word_embeddings=True, num_heads=4, num_kv_heads=1, dtype="bfloat16")),  # MQA: one group
    (2, dict(num_heads=4, num_kv_heads=4, dtype="bfloat16")),  # MHA: a group per head
])
def test_tied_embeddings_and_other_gqa_round_trip_in_bf16(tmp_path, tp, overrides):
    from megatron_vlm.models.registry import get_family

    src = get_family("qwen2_5_vl").save_tiny_checkpoint(tmp_path / "src", **overrides)
    api.convert("hf-to-megatron", hf=str(src), out=str(tmp_path / "meg"), tp=tp)
    meg = megatron_tensors(tmp_path / "meg")
    assert {t.dtype for t in meg.values()} == {torch.bfloat16}
    assert ("language_model.output_layer.weight" in meg) == (not overrides.get("tie_word_embeddings"))
    api.convert("megatron-to-hf", ckpt=str(tmp_path / "meg"), out=str(tmp_path / "out"))
    assert_bit_exact(hf_tensors(src), hf_tensors(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def test_dtype_option_casts(converted, tmp_path):
    api.convert("megatron-to-hf", ckpt=str(converted(1, 1)), out=str(tmp_path / "bf16"), dtype="bfloat16")
    tensors = hf_tensors(tmp_path / "bf16")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


def test_reshard_repads_the_vocabulary_and_keeps_every_weight(converted, tiny_hf_checkpoint, tmp_path):
    api.convert("reshard", ckpt=str(converted(2, 2)), out=str(tmp_path / "tp1"), tp=1, pp=1)
    meg = megatron_tensors(tmp_path / "tp1")
    assert meg[EMB].shape[0] == 151936
    meta = json.loads((tmp_path / "tp1" / "iter_0000000" / "longvlm.json").read_text())
    assert meta["layout"]["tp"] == 1 and meta["padded_vocab_size"] == 151936
    api.convert("megatron-to-hf", ckpt=str(tmp_path / "tp1"), out=str(tmp_path / "hf"))
    assert_bit_exact(hf_tensors(tiny_hf_checkpoint), hf_tensors(tmp_path / "hf"))


def test_export_writes_trained_rope_settings_and_copies_tokenizer_files(
        converted, tiny_hf_checkpoint, qwen_tokenizer_dir, tmp_path, capsys):
    from transformers import AutoConfig, AutoTokenizer

    template = tmp_path / "template"
    shutil.copytree(qwen_tokenizer_dir, template)
    (template / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Qwen2VLImageProcessor"}))
    (template / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643], "top_p": 0.5}))
    out = tmp_path / "hf"
    main(["convert", "megatron-to-hf", "--ckpt", str(converted(1, 1)), "--out", str(out),
          "--hf-template", str(template), "--rope-theta", "4090000", "--max-position-embeddings", "131072"])
    summary = capsys.readouterr().out
    assert "copied from the template: generation_config.json, merges.txt, preprocessor_config.json" in summary
    config = AutoConfig.from_pretrained(out)
    assert config.text_config.rope_parameters["rope_theta"] == 4090000
    assert config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert config.text_config.max_position_embeddings == 131072
    assert json.loads((out / "generation_config.json").read_text())["top_p"] == 0.5
    assert json.loads((out / "preprocessor_config.json").read_text())["image_processor_type"] == "Qwen2VLImageProcessor"
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|image_pad|>") == 151655


def test_flat_transformers4_config_keeps_its_layout():
    from megatron_vlm.models.hf_config import rewrite_hf_config

    flat = {"model_type": "qwen2_5_vl", "rope_theta": 1e6, "max_position_embeddings": 128000,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "torch_dtype": "bfloat16"}
    out = rewrite_hf_config(flat, rope_theta=4e6, max_position_embeddings=131072,
                            rope_scaling={"rope_type": "yarn", "factor": 4.0})
    assert out["rope_theta"] == 4e6 and out["max_position_embeddings"] == 131072
    assert out["rope_scaling"] == {"type": "mrope", "mrope_section": [16, 24, 24], "rope_type": "yarn", "factor": 4.0}
    assert "text_config" not in out and flat["rope_theta"] == 1e6


# -- Qwen3-VL -------------------------------------------------------------------------------------------


def test_qwen3vl_round_trip_at_tp2_pp2_is_bit_exact(tiny_qwen3vl_checkpoint, convert_to_megatron, tmp_path):
    """Every Qwen3-VL tensor (q/k norms, LayerNorm biases, learned positions, DeepStack mergers) HF ->
    Megatron (TP2, PP2) -> HF unchanged, config included; spot-checked against a hand computation."""
    ckpt = convert_to_megatron(tiny_qwen3vl_checkpoint, 2, 2)
    hf, meg = hf_tensors(tiny_qwen3vl_checkpoint), megatron_tensors(ckpt)
    lm, vis = "model.language_model.layers.1.", "model.visual."
    assert torch.equal(meg["language_model.decoder.layers.1.self_attention.k_layernorm.weight"],
                       hf[lm + "self_attn.k_norm.weight"])
    assert "language_model.decoder.layers.1.self_attention.linear_qkv.bias" not in meg  # no QKV bias
    assert torch.equal(meg["vision_model.deepstack_mergers.1.layer_norm.bias"],
                       hf[vis + "deepstack_merger_list.1.norm.bias"])
    assert torch.equal(meg["vision_model.decoder.layers.3.mlp.linear_fc1.layer_norm_bias"], hf[vis + "blocks.3.norm2.bias"])
    assert torch.equal(meg["vision_model.pos_embed.weight"], hf[vis + "pos_embed.weight"])
    out = tmp_path / "hf"
    api.convert("megatron-to-hf", ckpt=str(ckpt), out=str(out), max_shard_size="20MB")
    assert_bit_exact(hf, hf_tensors(out))
    assert json.loads((out / "config.json").read_text()) == json.loads((tiny_qwen3vl_checkpoint / "config.json").read_text())


def test_qwen3vl_verify_and_an_export_with_extended_rope_that_transformers_loads(
        tiny_qwen3vl_checkpoint, convert_to_megatron, qwen3vl_tokenizer_dir, tmp_path, capsys):
    """``verify`` passes on Qwen3-VL (probe from config.json's ids, and from its offline tokenizer);
    the export with a raised RoPE base and window keeps interleaved mRoPE and loads in transformers."""
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    ckpt = convert_to_megatron(tiny_qwen3vl_checkpoint, 1, 1)
    assert main(["convert", "verify", "--hf", str(tiny_qwen3vl_checkpoint), "--ckpt", str(ckpt), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["passed"] and result["images"] == 3 and result["top1_agreement"] == 1.0
    with_tokenizer = broken_copy(tiny_qwen3vl_checkpoint, tmp_path / "with_tokenizer")
    for f in qwen3vl_tokenizer_dir.iterdir():
        shutil.copy(f, with_tokenizer / f.name)
    assert main(["convert", "verify", "--hf", str(with_tokenizer), "--ckpt", str(ckpt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["passed"]
    out = tmp_path / "extended"
    main(["convert", "megatron-to-hf", "--ckpt", str(ckpt), "--out", str(out), "--rope-theta", "2e7",
          "--max-position-embeddings", "524288"])
    rope = AutoConfig.from_pretrained(out).text_config.rope_parameters
    assert rope["rope_theta"] == 2e7 and rope["mrope_interleaved"] and rope["mrope_section"] == [2, 3, 3]
    assert AutoConfig.from_pretrained(out).text_config.max_position_embeddings == 524288
    model = Qwen3VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    assert torch.equal(model.model.visual.pos_embed.weight, hf_tensors(tiny_qwen3vl_checkpoint)["model.visual.pos_embed.weight"])


# -- bad inputs: a clear message, exit status 2, nothing written ------------------------------------


def broken_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_cli_expecting_error(capsys, argv: list[str], out: Path, *fragments: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp dir left


def _index(path: Path) -> dict:
    return json.loads((path / "model.safetensors.index.json").read_text())


def _drop_second_shard(bad: Path) -> str:
    shard = sorted(set(_index(bad)["weight_map"].values()))[1]
    (bad / shard).unlink()
    return f"missing shard file(s) listed in model.safetensors.index.json: {shard}"


def _truncate_first_shard(bad: Path) -> str:
    shard = sorted(set(_index(bad)["weight_map"].values()))[0]
    with open(bad / shard, "r+b") as f:
        f.truncate((bad / shard).stat().st_size // 2)
    return f"{shard}: corrupt safetensors file"


def _edit_config(change):
    def damage(bad: Path) -> str:
        config = json.loads((bad / "config.json").read_text())
        message = change(config)
        (bad / "config.json").write_text(json.dumps(config))
        return message
    return damage


DAMAGED_HF = {  # name: damage(copy of the checkpoint) -> the message `convert hf-to-megatron` must give
    "missing shard": _drop_second_shard,
    "truncated shard": _truncate_first_shard,
    "wrong architecture": _edit_config(lambda c: (
        c.update(model_type="qwen2_vl", architectures=["Qwen2VLForConditionalGeneration"]),
        "wrong architecture: model_type='qwen2_vl'")[1]),
    "shapes contradict the config": _edit_config(lambda c: (
        c["text_config"].update(intermediate_size=96),
        "model.layers.0.mlp.gate_proj.weight is (128, 64), config implies (96, 64)")[1]),
}


@pytest.mark.parametrize("damage", DAMAGED_HF.values(), ids=DAMAGED_HF.keys())
def test_damaged_hf_checkpoint_fails_clearly(tiny_hf_checkpoint, tmp_path, capsys, damage):
    bad = broken_copy(tiny_hf_checkpoint, tmp_path / "bad")
    message = damage(bad)
    out = tmp_path / "out"
    run_cli_expecting_error(capsys, ["convert", "hf-to-megatron", "--hf", str(bad), "--out", str(out)], out, message)


def test_unmapped_and_missing_tensors_are_named(tiny_hf_checkpoint, tmp_path, capsys):
    bad = broken_copy(tiny_hf_checkpoint, tmp_path / "bad")
    index = _index(bad)
    shard = index["weight_map"]["model.norm.weight"]
    tensors = load_file(bad / shard)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    del tensors["model.norm.weight"]
    save_file(tensors, bad / shard, metadata={"format": "pt"})
    index["weight_map"]["model.layers.0.self_attn.rotary_emb.inv_freq"] = shard
    del index["weight_map"]["model.norm.weight"]
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    assert main(["convert", "hf-to-megatron", "--hf", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing: model.norm.weight" in err
    assert "not mapped by any rule: model.layers.0.self_attn.rotary_emb.inv_freq" in err
    assert not out.exists()


def test_impossible_layout_fails_before_writing(tiny_hf_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    run_cli_expecting_error(
        capsys, ["convert", "hf-to-megatron", "--hf", str(tiny_hf_checkpoint), "--out", str(out), "--tp", "4",
                 "--pp", "3"], out,
        "2 language-model layers cannot fill pp=3 stages",
        "language_model.decoder.layers.{i}.self_attention.linear_qkv.weight: 2 units along dim 0 do not divide over tp=4",
        "vision_model.decoder.layers.{i}.self_attention.linear_qkv.weight: 2 units along dim 0 do not divide over "
        "tp=4")


def test_existing_output_is_never_overwritten(converted, tiny_hf_checkpoint, capsys):
    ckpt = converted(1, 1)
    before = sorted(p.name for p in (ckpt / "iter_0000000").iterdir())
    assert main(["convert", "hf-to-megatron", "--hf", str(tiny_hf_checkpoint), "--out", str(ckpt)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in (ckpt / "iter_0000000").iterdir()) == before


def test_corrupt_megatron_checkpoint_fails_clearly(converted, tmp_path, capsys):
    bad = broken_copy(converted(1, 1), tmp_path / "bad")
    for f in (bad / "iter_0000000").glob("*.distcp"):
        f.write_bytes(f.read_bytes()[:100])
    out = tmp_path / "out"
    run_cli_expecting_error(capsys, ["convert", "megatron-to-hf", "--ckpt", str(bad), "--out", str(out)], out,
                            "__0_0.distcp: 100 bytes, its metadata needs")
    (bad / "latest_checkpointed_iteration.txt").unlink()
    run_cli_expecting_error(capsys, ["convert", "megatron-to-hf", "--ckpt", str(bad), "--out", str(out)], out,
                            "not a Megatron checkpoint (no latest_checkpointed_iteration.txt)")


def test_per_layer_key_checkpoints_export_too(converted, tiny_hf_checkpoint, tmp_path):
    """Checkpoints saved with megatron-core's ``non_homogeneous_layers`` (``layers.{i}.`` keys)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    from megatron_vlm.formats.checkpoint import META_NAME, write_tracker
    from megatron_vlm.runtime import process_group

    src = converted(1, 1)
    tensors = megatron_tensors(src)
    assert "language_model.decoder.layers.1.mlp.linear_fc2.weight" in tensors
    out = tmp_path / "per_layer"
    with process_group():
        (out / "iter_0000007").mkdir(parents=True)
        dist_checkpointing.save({k: ShardedTensor.from_rank_offsets(k, t, replica_id=0) for k, t in tensors.items()},
                                str(out / "iter_0000007"))
    shutil.copy(src / "iter_0000000" / META_NAME, out / "iter_0000007" / META_NAME)
    write_tracker(out, 7)
    api.convert("megatron-to-hf", ckpt=str(out), out=str(tmp_path / "hf"))
    assert_bit_exact(hf_tensors(tiny_hf_checkpoint), hf_tensors(tmp_path / "hf"))


def test_unmapped_megatron_tensor_is_named(converted, tmp_path, capsys):
    from megatron_vlm.formats.checkpoint import META_NAME, save_global_tensors, write_tracker
    from megatron_vlm.runtime import process_group

    src = converted(1, 1)
    tensors = megatron_tensors(src)
    tensors["language_model.embedding.position_embeddings.weight"] = torch.ones(8, 64)
    with process_group():
        save_global_tensors(tensors, tmp_path / "bad" / "iter_0000000")
    shutil.copy(src / "iter_0000000" / META_NAME, tmp_path / "bad" / "iter_0000000" / META_NAME)
    write_tracker(tmp_path / "bad", 0)
    out = tmp_path / "out"
    run_cli_expecting_error(capsys, ["convert", "megatron-to-hf", "--ckpt", str(tmp_path / "bad"), "--out", str(out)],
                            out, "not mapped by any rule: language_model.embedding.position_embeddings.weight")


def test_output_directory_gets_a_normal_mode(converted):
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert converted(1, 1).stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
