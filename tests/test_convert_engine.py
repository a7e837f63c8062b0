"""``checkpoint_tools.engine``: the conversion engine's contract, called directly (not through the CLI).

A tiny Qwen2.5-VL with a 1,000-token vocabulary (so the padding is easy to compute: 128 x TP rows) is
converted once per module; the expected Megatron tensors are built here by hand from the HF tensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoint_tools import engine
from checkpoint_tools.config import HFToMegatronConfig, MegatronTarget, MegatronToHFConfig, ReshardConfig
from megatron_vlm.formats.checkpoint import CheckpointError, MegatronCheckpoint
from megatron_vlm.models.mapping import IDENTITY, Mapping, MappingError
from megatron_vlm.parallel import ParallelLayout
from megatron_vlm.runtime import process_group

VOCAB, HIDDEN, HEADS, GROUPS, HEAD_DIM, FFN = 1000, 64, 4, 2, 16, 128
EMB = "language_model.embedding.word_embeddings.weight"
OUTPUT = "language_model.output_layer.weight"
QKV0 = "language_model.decoder.layers.0.self_attention.linear_qkv.weight"
FC1_1 = "language_model.decoder.layers.1.mlp.linear_fc1.weight"
# HF tensors of the tiny model: language 2 x 12 per layer + embedding, norm, lm_head; vision 4 x 12 per block +
# patch embedding + 5 merger tensors. Megatron fuses q/k/v and gate/up: 2 x 7 + 3 and 4 x 10 + 1 + 5.
HF_TENSORS, MEGATRON_TENSORS = 2 * 12 + 3 + 4 * 12 + 1 + 5, 2 * 7 + 3 + 4 * 10 + 1 + 5


def hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def megatron_tensors(ckpt: Path, iteration: int | str | None = None) -> dict[str, torch.Tensor]:
    with process_group():
        src = MegatronCheckpoint.open(ckpt, iteration)
        return src.load(sorted(src.shapes))


def target(tp: int = 1, pp: int = 1, divisible_by: int = 128) -> MegatronTarget:
    return MegatronTarget(ParallelLayout(tp=tp, pp=pp), divisible_by)


def assert_no_output(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    from megatron_vlm.models.registry import get_family

    out = tmp_path_factory.mktemp("engine") / "hf"
    return get_family("qwen2_5_vl").save_tiny_checkpoint(out, seed=3, vocab_size=VOCAB, max_shard_size="300KB")


@pytest.fixture(scope="module")
def imported(hf) -> tuple[Path, engine.ConversionResult]:
    out = hf.parent / "meg"
    return out, engine.hf_to_megatron(HFToMegatronConfig(hf=str(hf), out=str(out)))


def test_hf_to_megatron_applies_the_table_to_every_tensor(hf, imported):
    ckpt, result = imported
    src, meg = hf_tensors(hf), megatron_tensors(ckpt)
    assert len(list(hf.glob("*.safetensors"))) > 1  # read across shards
    assert len(src) == HF_TENSORS and len(meg) == MEGATRON_TENSORS == result.tensors
    # the vocabulary padded with zero rows to the next multiple of 128
    for name, hf_name in ((EMB, "model.embed_tokens.weight"), (OUTPUT, "lm_head.weight")):
        assert meg[name].shape == (1024, HIDDEN)
        assert torch.equal(meg[name][:VOCAB], src[hf_name]) and not meg[name][VOCAB:].any()
    # q/k/v fused per query group: [q of the group's 2 heads; k; v]
    q, k, v = (src[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv")
    per_group = HEADS // GROUPS * HEAD_DIM
    expected = torch.cat([torch.cat([q[g * per_group:(g + 1) * per_group], k[g * HEAD_DIM:(g + 1) * HEAD_DIM],
                                     v[g * HEAD_DIM:(g + 1) * HEAD_DIM]]) for g in range(GROUPS)])
    assert torch.equal(meg[QKV0], expected)
    # gate and up stacked
    assert torch.equal(meg[FC1_1], torch.cat([src["model.layers.1.mlp.gate_proj.weight"],
                                              src["model.layers.1.mlp.up_proj.weight"]]))
    assert meg[FC1_1].shape == (2 * FFN, HIDDEN)
    assert torch.equal(meg["language_model.decoder.final_layernorm.weight"], src["model.norm.weight"])
    # what the result reports: every tensor's bytes, the 2 x 24 padding rows included
    hf_bytes = sum(t.numel() * t.element_size() for t in src.values())
    assert result.bytes == hf_bytes + 2 * 24 * HIDDEN * 4
    assert (result.action, result.dtype, result.layout, result.out) == ("hf-to-megatron", "float32",
                                                                       {"tp": 1, "pp": 1}, ckpt)


def test_the_written_checkpoint_records_what_it_holds(hf, imported):
    ckpt, _ = imported
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    meta = json.loads((ckpt / "iter_0000000" / "longvlm.json").read_text())
    assert meta["hf_config"] == json.loads((hf / "config.json").read_text())
    assert (meta["vocab_size"], meta["padded_vocab_size"], meta["dtype"]) == (VOCAB, 1024, "float32")
    assert (meta["layout"]["tp"], meta["layout"]["pp"], meta["layout"]["make_vocab_size_divisible_by"]) == (1, 1, 128)
    assert meta["source"] == {"hf_dir": str(hf.resolve()), "dtype": "float32"}


def test_reshard_pads_the_vocabulary_for_the_target_and_casts(imported, tmp_path):
    """The next multiple of ``divisible_by x tp`` rows: 1000 -> 1008 (of 14; the round trip below: 1000 and 1024);
    ``dtype`` casts every written tensor."""
    ckpt, _ = imported
    out = tmp_path / "out"
    result = engine.reshard(ReshardConfig(ckpt=str(ckpt), out=str(out), target=target(2, 1, 7), dtype="bfloat16"))
    meta = json.loads((out / "iter_0000000" / "longvlm.json").read_text())
    assert (meta["padded_vocab_size"], meta["layout"]["tp"], meta["dtype"]) == (1008, 2, "bfloat16")
    with process_group():
        written = MegatronCheckpoint.open(out)
    assert written.shapes[EMB] == written.shapes[OUTPUT] == (1008, HIDDEN)
    assert set(written.dtypes.values()) == {torch.bfloat16}
    source = megatron_tensors(ckpt)  # 1024 vocabulary rows: 2 x 16 fewer written
    assert result.bytes == 2 * (sum(t.numel() for t in source.values()) - 2 * 16 * HIDDEN)
    assert (result.layout, result.tensors, result.dtype) == ({"tp": 2, "pp": 1}, MEGATRON_TENSORS, "bfloat16")


def test_reshard_round_trip_keeps_every_weight_and_the_iteration(hf, imported, tmp_path, monkeypatch):
    """A checkpoint at iteration 5: reshard to TP 2 PP 2 with 1,000 rows, back to TP 1 with 1,024, export:
    every HF tensor as it was; the iteration carries over."""
    ckpt, _ = imported
    src = tmp_path / "at5"
    shutil.copytree(ckpt, src)
    (src / "iter_0000000").rename(src / "iter_0000005")
    (src / "latest_checkpointed_iteration.txt").write_text("5\n")
    monkeypatch.setattr(engine, "LOAD_BATCH_BYTES", 50_000)  # several loads, a stacked key split over them
    engine.reshard(ReshardConfig(ckpt=str(src), out=str(tmp_path / "tp2"), target=target(2, 2, 100)))
    assert (tmp_path / "tp2" / "latest_checkpointed_iteration.txt").read_text().strip() == "5"
    with process_group():
        assert MegatronCheckpoint.open(tmp_path / "tp2").shapes[EMB] == (1000, HIDDEN)  # a multiple of 200 already
    engine.reshard(ReshardConfig(ckpt=str(tmp_path / "tp2"), out=str(tmp_path / "tp1"), iteration="5"))
    back = megatron_tensors(tmp_path / "tp1", 5)
    assert back[EMB].shape == (1024, HIDDEN) and not back[EMB][VOCAB:].any()
    result = engine.megatron_to_hf(MegatronToHFConfig(ckpt=str(tmp_path / "tp1"), out=str(tmp_path / "hf")))
    original, exported = hf_tensors(hf), hf_tensors(tmp_path / "hf")
    assert sorted(exported) == sorted(original) and result.tensors == HF_TENSORS
    for name, t in original.items():
        assert exported[name].dtype == t.dtype and torch.equal(exported[name], t), name
    assert result.bytes == sum(t.numel() * t.element_size() for t in original.values())


@pytest.mark.parametrize("tp,pp,problems", [
    (4, 1, ["language_model.decoder.layers.{i}.self_attention.linear_qkv.weight: 2 units along dim 0 do not divide "
            "over tp=4", "vision_model.decoder.layers.{i}.self_attention.linear_qkv.weight: 2 units along dim 0"]),
    (1, 3, ["2 language-model layers cannot fill pp=3 stages"]),
    (4, 3, ["2 language-model layers cannot fill pp=3 stages", "linear_qkv.bias: 2 units along dim 0 do not divide"]),
])
def test_an_impossible_target_is_refused_before_anything_is_written(hf, imported, tmp_path, tp, pp, problems):
    """The target's dims are checked against the layout on shapes alone: one error naming every problem."""
    for make in (lambda out: engine.hf_to_megatron(HFToMegatronConfig(hf=str(hf), out=str(out), target=target(tp, pp))),
                 lambda out: engine.reshard(ReshardConfig(ckpt=str(imported[0]), out=str(out),
                                                          target=target(tp, pp)))):
        out = tmp_path / "out"
        with pytest.raises(CheckpointError, match="^layout not possible for this model: ") as err:
            make(out)
        for problem in problems:
            assert problem in str(err.value)
        assert_no_output(out)


def test_check_layout_accepts_what_divides(hf):
    from megatron_vlm.models.mapping import Dims
    from megatron_vlm.models.registry import read_arch

    dims = Dims.from_arch(read_arch(hf / "config.json"), 1024)
    mappings = [Mapping("a", ("a",), IDENTITY, 0), Mapping("b", ("b",), IDENTITY, 1), Mapping("c", ("c",), IDENTITY, None)]
    shapes = {"a": (6, 4), "b": (4, 10), "c": (7,)}
    engine.check_layout(mappings, shapes, dims, ParallelLayout(tp=2, pp=2))
    with pytest.raises(CheckpointError, match=r"b: 10 units along dim 1 do not divide over tp=4") as err:
        engine.check_layout(mappings, shapes, dims, ParallelLayout(tp=4))
    assert "a: 6 units" in str(err.value) and "c:" not in str(err.value)


def test_an_unmapped_or_missing_hf_tensor_is_named(hf, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(hf, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.layers.1.post_attention_layernorm.weight"]
    tensors = load_file(bad / shard)
    del tensors["model.layers.1.post_attention_layernorm.weight"]
    tensors["model.layers.1.extra.weight"] = torch.ones(3)
    save_file(tensors, bad / shard, metadata={"format": "pt"})
    del index["weight_map"]["model.layers.1.post_attention_layernorm.weight"]
    index["weight_map"]["model.layers.1.extra.weight"] = shard
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    with pytest.raises(MappingError) as err:
        engine.hf_to_megatron(HFToMegatronConfig(hf=str(bad), out=str(out)))
    assert "1 tensor(s) the model's mapping needs are missing: model.layers.1.post_attention_layernorm.weight" in str(
        err.value)
    assert "1 tensor(s) are not mapped by any rule: model.layers.1.extra.weight" in str(err.value)
    assert_no_output(out)


def test_export_checks_shapes_against_the_recorded_config(imported, tmp_path):
    """An export writes the shapes the checkpoint's ``hf_config`` implies, or refuses naming the tensor."""
    bad = tmp_path / "bad"
    shutil.copytree(imported[0], bad)
    meta_file = bad / "iter_0000000" / "longvlm.json"
    meta = json.loads(meta_file.read_text())
    meta["hf_config"]["text_config"]["intermediate_size"] = 96
    meta_file.write_text(json.dumps(meta))
    out = tmp_path / "out"
    with pytest.raises(MappingError, match=r"model.layers.0.mlp.gate_proj.weight: the checkpoint gives shape "
                                           r"\(128, 64\), the recorded config implies \(96, 64\)"):
        engine.megatron_to_hf(MegatronToHFConfig(ckpt=str(bad), out=str(out)))
    assert_no_output(out)
    with pytest.raises(CheckpointError, match="--hf-template .*: not a directory"):
        engine.megatron_to_hf(MegatronToHFConfig(ckpt=str(imported[0]), out=str(out),
                                                 hf_template=str(tmp_path / "none")))
    assert_no_output(out)


def test_load_batches_stay_under_the_byte_limit(monkeypatch):
    monkeypatch.setattr(engine, "LOAD_BATCH_BYTES", 100)
    names = ["a", "b", "c", "d", "e"]
    mappings = [Mapping(n, (n,), IDENTITY, None) for n in names]
    shapes = {"a": (10,), "b": (20,), "c": (5,), "d": (100,), "e": (2, 5)}  # 40, 80, 20, 400, 40 bytes (fp32)
    dtypes = dict.fromkeys(names, torch.float32) | {"e": torch.bfloat16}  # e: 20 bytes
    batches = [[m.megatron for m in b] for b in engine._batches(mappings, shapes, dtypes)]
    assert batches == [["a"], ["b", "c"], ["d"], ["e"]]  # a tensor over the limit still loads, alone


def test_summary_line():
    result = engine.ConversionResult("reshard", Path("/ckpt/out"), 63, 1_500_000_000, 2.04, "bfloat16",
                                     {"tp": 2, "pp": 1})
    assert result.summary() == "reshard: wrote 63 tensors (1.50 GB, bfloat16) to /ckpt/out in 2.0 s [tp=2, pp=1]"
    export = engine.ConversionResult("megatron-to-hf", Path("/hf"), 81, 10**8, 0.5, "float32")
    assert export.summary() == ("megatron-to-hf: wrote 81 tensors (0.10 GB, float32) to /hf in 0.5 s; "
                                "copied from the template: nothing")
