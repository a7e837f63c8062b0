"""``longvlm tune``: ranking, the VLM-specific parts of the cost model, inputs (presets, checkpoints,
recipes, built datasets), outputs (table, --explain, --json, --write-recipe) and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from launch.tune.layout import Layout
from launch.tune.memory import GIB, Setup, activations, model_states
from launch.tune.presets import MODELS
from launch.tune.workload import Row, dataset_workload, synthetic_workload
from longvlm import api
from longvlm.cli import main
from megatron_vlm.flops import model_flops
from megatron_vlm.hardware import GPUS
from megatron_vlm.models.qwen25vl.arch import Qwen25VLArch

SEVEN_B = Qwen25VLArch.from_hf(MODELS["qwen2.5-vl-7b"])


def test_7b_on_64_h100s(capsys):
    """Feasible layouts only, fastest first; TP 8 rejected because Qwen2.5-VL's vision MLP (3,420) and the
    7B's 4 KV groups do not split 8 ways; with a pipeline the first stage gets fewer language layers."""
    plan = api.tune(model="qwen2.5-vl-7b", gpus=64, global_batch=32, gpu="h100", micro_batch=[1])
    capacity = GPUS["h100"].memory_gib * GIB
    assert plan.ranked
    assert all(c.peak.total <= capacity for c in plan.ranked)
    steps = [c.time.step for c in plan.ranked]
    assert steps == sorted(steps)
    assert {c.layout.tp for c in plan.ranked} <= {1, 2, 4}
    assert any("TP 8" in r and "vision MLP width" in r for r in plan.rejected)
    piped = [c for c in plan.ranked if c.layout.pp == 2]
    assert piped and all(c.layout.first_stage_layers < SEVEN_B.num_layers // 2 for c in piped)
    for c in piped:  # the vision tower lives on stage 0, the logits on the last
        assert c.memory[0].activations.vision > 0 and c.memory[1].activations.vision == 0
        assert c.memory[1].activations.logits > 0 and c.memory[0].activations.logits == 0
    best = plan.ranked[0]
    assert best.time.tokens_per_gpu == pytest.approx(32 * 131072 / best.time.step / 64)

    assert main(["tune", "--model", "qwen2.5-vl-7b", "--gpus", "64", "--global-batch", "32", "--micro-batch", "1",
                 "--json", "--top", "3", "--explain", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["ranked"]) == 3 and out["explained"]["step_seconds"] == pytest.approx(best.time.step)
    stage0 = out["ranked"][0]["memory_gib"][0]
    assert stage0["total"] == pytest.approx(out["ranked"][0]["peak_memory_gib"])
    assert main(["tune", "--model", "qwen2.5-vl-7b", "--gpus", "64", "--global-batch", "32", "--micro-batch", "1",
                 "--tp", "2", "--cp", "4", "--explain", "1"]) == 0
    text = capsys.readouterr().out
    assert "activations: vision tower" in text and "CP communication (exposed)" in text and "TP2 PP1 CP4" in text


def test_qwen3vl_8b_is_planned_with_its_own_geometry_and_shapes():
    """A Qwen3-VL preset: pages on its 32-pixel grid (A4 at 144 dpi: 1191 x 1684 px -> 1184 x 1696, 37 x 53 tokens),
    its FLOPs (DeepStack mergers, plain vision MLP) and memory, feasible layouts ranked."""
    from launch.tune.workload import page_grid
    from megatron_vlm.models.registry import read_arch

    arch = read_arch(MODELS["qwen3-vl-8b"])
    geometry = arch.family.geometry
    assert page_grid(144, geometry) == (1, 106, 74)  # 1696 / 16 rows, 1184 / 16 columns
    workload = synthetic_workload(131072, geometry)
    assert workload.peak_row.image_tokens == len(workload.peak_row.image_grids) * 53 * 37
    plan = api.tune(model="qwen3-vl-8b", gpus=64, global_batch=32, gpu="h100", micro_batch=[1])
    assert plan.ranked and plan.arch.deepstack_layers == 3
    flops = model_flops(arch, [131072], [(1, 106, 74)]).forward
    per_patch_mlp = 2 * 2 * 1152 * 4304  # fc1 and fc2, no gate
    assert flops.vision_linear > 27 * 106 * 74 * per_patch_mlp


def test_infeasible_request_says_why(capsys):
    assert main(["tune", "--model", "qwen2.5-vl-72b", "--gpus", "8", "--gpu", "a100", "--global-batch", "8",
                 "--micro-batch", "1"]) == 1
    out = capsys.readouterr().out
    assert "does not fit in 80.0 GiB (A100 SXM 80GB) at any layout: smallest is TP4 PP2 CP1 DP1" in out
    assert "model states 200 GiB" in out and "Try more GPUs" in out
    assert main(["tune", "--model", "qwen2.5-vl-7b", "--gpus", "8", "--gpu", "a100", "--global-batch", "8",
                 "--micro-batch", "1", "--recompute", "none", "--tp", "1", "--cp", "8"]) == 1
    out = capsys.readouterr().out
    assert "smallest is TP1 PP1 CP8 DP1 MB1 recompute=none at 237.3 GiB (stage 0); activations 160 GiB" in out
    assert "recompute=full would bring it to 74.4 GiB" in out


def test_the_cost_model_knows_the_vlm():
    setup, row = Setup(), synthetic_workload(131072, SEVEN_B.family.geometry).rows[0]
    # context parallelism splits the images: the busiest CP rank's vision activations halve
    one, two = (activations(SEVEN_B, Layout.make(cp=cp), setup, row, 0).vision for cp in (1, 2))
    assert two == pytest.approx(one / 2, rel=0.05)
    # answer-only logits: the output layer's memory follows the answer tokens, not the row length
    few, many = (activations(SEVEN_B, Layout.make(cp=8), setup, Row(row.segments, (), n), 0).logits
                 for n in (512, 4096))
    # per answer token on one of 8 CP ranks: the bf16 output-layer input and the fp32 softmax over the vocabulary
    assert many - few == pytest.approx((4096 - 512) / 8 * (2 * SEVEN_B.hidden_size + 4 * SEVEN_B.vocab_size))
    # attention at the real sample lengths: four 32K samples cost a quarter of one 128K sample's attention
    packed = model_flops(SEVEN_B, [32768] * 4).forward.language_attention
    single = model_flops(SEVEN_B, [131072]).forward.language_attention
    assert packed / single == pytest.approx(0.25, rel=1e-3)
    # the distributed optimizer shards over DP x CP
    a, b, c = (model_states(SEVEN_B, Layout.make(cp=cp, dp=dp), setup, 0).optimizer
               for cp, dp in ((1, 8), (4, 2), (1, 2)))
    assert a == b and c == pytest.approx(4 * a, rel=1e-3)


@pytest.fixture(scope="module")
def built_data(built) -> str:
    """The prefix of conftest's small built dataset (512-token rows of page-image VQA samples)."""
    return str(built[0])


def test_rows_of_a_built_dataset(built_data):
    """--data reads every packed row's sample lengths, page grids and answer tokens; the planned FLOPs are
    the mean of each row's own count."""
    from megatron_vlm.data.dataset import BuiltDataset

    workload = dataset_workload([built_data])
    data = BuiltDataset(built_data, check_pool=False, decode_images=False)
    assert workload.seq_length == 512 and len(workload.rows) == len(data)
    for row, i in zip(workload.rows, range(len(data))):
        item = data[i]
        assert row.tokens == len(item["input_ids"]) and len(row.segments) == len(item["cu_seqlens"]) - 1
        assert row.image_tokens == int((item["input_ids"] == SEVEN_B.image_token_id).sum())
        assert row.answer_tokens == int(item["targets"].sum())
    mean = workload.mean_flops(SEVEN_B)
    counts = [model_flops(SEVEN_B, r.segments, r.image_grids, r.answer_tokens).total for r in workload.rows]
    assert mean.total == pytest.approx(sum(counts) / len(counts))
    plan = api.tune(model="qwen2.5-vl-7b", gpus=8, global_batch=8, data=[built_data], micro_batch=[1])
    assert plan.ranked and plan.workload.rows == workload.rows


def test_model_from_checkpoints_and_recipe(tmp_path, tiny_hf_checkpoint, convert_to_megatron, built_data):
    """The tiny model given as an HF directory, as a converted Megatron checkpoint and through a recipe
    plans the same; the recipe supplies the batch, length, precision and datasets, and --write-recipe writes
    the chosen layout back into a recipe that loads."""
    from training.config import load_recipe

    common = dict(gpus=4, gpus_per_node=4, gpu="h100", micro_batch=[1], recompute=["none"])
    hf = api.tune(model=str(tiny_hf_checkpoint), global_batch=8, data=[built_data], **common)
    meg = api.tune(model=str(convert_to_megatron(tiny_hf_checkpoint, 1, 1)), global_batch=8, data=[built_data],
                   **common)
    assert [c.layout for c in hf.ranked] == [c.layout for c in meg.ranked] and len(hf.ranked) >= 2
    assert hf.ranked[0].peak.states == meg.ranked[0].peak.states

    recipe = tmp_path / "run.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"checkpoint": str(tiny_hf_checkpoint), "attention_backend": "torch"},
        "data": {"train": [{"prefix": built_data}], "num_workers": 1, "prefetch": 1},
        "train": {"seq_length": 512, "global_batch_size": 8, "precision": "bf16"}}))
    tuned = tmp_path / "tuned.yaml"
    from_recipe = api.tune(model=str(recipe), write_recipe=str(tuned), explain=2, **common)
    assert from_recipe.request.global_batch == 8 and from_recipe.workload.seq_length == 512
    assert [c.layout for c in from_recipe.ranked] == [c.layout for c in hf.ranked]
    chosen = from_recipe.ranked[1].layout
    written = load_recipe(tuned)
    assert written.parallel == chosen.parallel and written.train.micro_batch_size == chosen.micro_batch
    assert written.model.recompute == chosen.recompute and written.data.train[0].prefix == built_data
    with pytest.raises(FileExistsError, match="tuned.yaml exists"):
        api.tune(model=str(recipe), gpus=4, write_recipe=str(tuned))
    # Transformer Engine's linears and attention in FP8: the written recipe names the chosen CP communication
    # and selective modules, and training accepts it for the GPU machine
    te = tmp_path / "te.yaml"
    plan = api.tune(model=str(recipe), write_recipe=str(te), transformer_impl="te", attention_backend="te",
                    precision="fp8", cp=[2], **{**common, "recompute": ["selective"]})
    written, chosen = load_recipe(te), plan.ranked[0].layout
    assert written.parallel.cp_comm_type == chosen.parallel.cp_comm_type in ("p2p", "a2a", "all_gather")
    assert written.model.recompute == "selective" and tuple(written.model.recompute_modules) == chosen.recompute_modules
    assert "act" not in chosen.recompute_modules and "layernorm" not in chosen.recompute_modules  # FP8 / TE norms
    assert written.model.transformer_impl == "te" and written.backend_problems(plan.arch) == []


def test_host_memory_warning(capsys):
    assert main(["tune", "--model", "qwen2.5-vl-3b", "--gpus", "8", "--global-batch", "8", "--micro-batch", "1",
                 "--recompute", "full", "--loader-workers", "8", "--host-memory-gib", "16"]) == 0
    out = capsys.readouterr().out
    assert "warning: host memory: the data loaders hold" in out and "more than the node's 16 GiB" in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "nope", "--gpus", "8", "--global-batch", "8"], "--model nope: not a preset"),
    (["--model", "qwen2.5-vl-7b", "--gpus", "8", "--global-batch", "8", "--global-batch-tokens", "1000000"],
     "give one of --global-batch (rows) and --global-batch-tokens"),
    (["--model", "qwen2.5-vl-7b", "--gpus", "8"], "give --global-batch"),
    (["--model", "qwen2.5-vl-7b", "--gpus", "12", "--global-batch", "8"], "not a whole number of nodes"),
    (["--model", "qwen2.5-vl-7b", "--gpus", "8", "--global-batch", "8", "--precision", "fp8"],
     "precision fp8 needs --transformer-impl te"),
    (["--model", "qwen2.5-vl-7b", "--gpus", "8", "--global-batch", "8", "--gpu", "a100", "--precision", "fp8",
      "--attention-backend", "te"], "fp8 peak of 0 TFLOP/s"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys):
    assert main(["tune", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longvlm tune: error: ") and message in err


@pytest.mark.parametrize("name,preset", [("mmprolong-7b-128k", "qwen2.5-vl-7b"),
                                         ("mmprolong-qwen3vl-8b", "qwen3-vl-8b")])
def test_the_shipped_128k_recipe_runs_on_the_machine_it_names(name, preset):
    """recipes/mmprolong-7b-128k.yaml (Qwen2.5-VL-7B) and mmprolong-qwen3vl-8b.yaml (Qwen3-VL-8B): every layer
    setting is one training accepts for the model on GPUs, and the tuner predicts its layout fits 80 GB GPUs (64
    of them, 8 per node, the recipe's comment) at 128K rows."""
    from launch.tune.search import Planner, Request
    from megatron_vlm.hardware import GPUS
    from megatron_vlm.models.registry import read_arch
    from training.config import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / f"{name}.yaml")
    arch = read_arch(MODELS[preset])
    assert recipe.backend_problems(arch, te_version="2.18") == []
    layout = recipe.parallel
    layout.check_model(arch.num_layers, arch.num_heads, arch.num_query_groups, arch.vision_heads)
    dp = 64 // layout.model_parallel_size
    setup = Setup(precision=recipe.train.precision, attention_backend=recipe.model.attention_backend,
                  transformer_impl=recipe.model.transformer_impl)
    request = Request(gpus=64, gpus_per_node=8, global_batch=recipe.train.global_batch_size, gpu=GPUS["h100"],
                      setup=setup)
    planner = Planner(arch, synthetic_workload(recipe.train.seq_length, arch.family.geometry), request)
    candidate = planner.evaluate(Layout(layout, dp=dp, micro_batch=recipe.train.micro_batch_size,
                                        recompute=recipe.model.recompute,
                                        recompute_modules=tuple(recipe.model.recompute_modules)))
    assert candidate.fits, f"{candidate.peak.total / 2**30:.1f} GiB"
