"""``longvlm tune``'s memory model against what the model allocates.

Model states (weights, gradient buffer, distributed-optimizer shard, Adam state) are compared exactly
with Megatron-Core's own allocations at TP/PP in {1, 2} x {1, 2} on 4 gloo processes; activations
(every tensor autograd saves) and the peak of a CPU forward + backward with the tiny model, per
recompute mode. Larger models and sequences: scripts/bench_tune.py (docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers.distributed import read_rank_results, run_distributed

from launch.tune.layout import SELECTIVE_SETS, Layout
from launch.tune.memory import (
    Param,
    Setup,
    activations,
    grad_buffer_layout,
    model_states,
    stage_parameters,
    transient_bytes,
)
from launch.tune.workload import Row
from megatron_vlm.models.qwen25vl.arch import Qwen25VLArch

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from tune_model_states import LAYOUTS, MODELS, hf_config  # noqa: E402


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_count_equals_transformers(name):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    hf = Qwen2_5_VLForConditionalGeneration(tiny_qwen25vl_config(**MODELS[name][0]))
    arch = Qwen25VLArch.from_hf(hf_config(name))
    assert sum(p.numel for p in stage_parameters(arch, Layout.make(), 0)) == sum(p.numel() for p in hf.parameters())


def test_grad_buffer_layout_by_hand():
    """Reverse order c, b, a; 64-aligned starts; the shared embedding b gets its own bucket; buckets padded
    to lcm(DP = 2, 128) = 128: [c @ 0..10 | pad] [b @ 128..192 | pad] [a @ 256..356 | pad to 384]."""
    params = [Param("a", 100), Param("b", 64, shared_embedding=True), Param("c", 10)]
    size, shards = grad_buffer_layout(params, dp=2, distributed_optimizer=True, bucket_size=None)
    assert size == 384
    # rank 0 owns [0, 64) [128, 192) [256, 320): c, b and 64 of a; rank 1 the other 36 of a
    assert shards.tolist() == [10 + 64 + 64, 36]
    size, shards = grad_buffer_layout(params, dp=2, distributed_optimizer=False, bucket_size=None)
    assert size == 174 and shards.tolist() == [174, 174]


@pytest.mark.slow
@pytest.mark.parametrize("name, bucket_size, adam", [("tiny", 20_000, True), ("100m", 2_000_000, False)])
def test_model_states_equal_what_megatron_allocates(tmp_path, name, bucket_size, adam):
    """Per rank and layout: parameter count, DDP's bf16 parameter buffer and fp32 gradient buffer bytes, the
    distributed optimizer's shard (its Adam state is 12 bytes per element), and (tiny) the bytes of
    Megatron's fp32 Adam state after a step, all equal the prediction."""
    args = ["--out", tmp_path, "--model", name, "--bucket-size", bucket_size] + (["--adam"] if adam else [])
    run_distributed("tests/workers/tune_model_states.py", 4, args, timeout=600)
    arch = Qwen25VLArch.from_hf(hf_config(name))
    setup = Setup(precision="bf16", distributed_optimizer=True, overlap_grad_reduce=True, bucket_size=bucket_size)
    checked = 0
    for rank in read_rank_results(tmp_path, 4):
        for tp, pp in LAYOUTS:
            got = rank[f"tp{tp}_pp{pp}"]
            layout = Layout.make(tp=tp, pp=pp, dp=got["dp_size"], first_stage_layers=MODELS[name][1] if pp > 1 else None)
            states = model_states(arch, layout, setup, got["stage"])
            params = stage_parameters(arch, layout, got["stage"])
            _, shards = grad_buffer_layout(params, dp=got["dp_size"], distributed_optimizer=True,
                                           bucket_size=setup.ddp_bucket_size(got["dp_size"], got["stage"]))
            assert states.parameters == got["parameters"], (tp, pp, got)
            assert states.weights == got["weights"], (tp, pp, got)
            assert states.gradients == got["gradients"], (tp, pp, got)
            assert shards[got["dp_rank"]] == got["shard_parameters"], (tp, pp, got)
            assert states.optimizer == 12 * max(shards)
            if adam:
                fp32 = Setup(precision="fp32", distributed_optimizer=False)
                assert model_states(arch, layout, fp32, got["stage"]).optimizer == got["adam_state"]
            checked += 1
    assert checked == 16


@pytest.fixture(scope="module")
def runtime_single():
    from megatron_vlm import runtime

    runtime.initialize_distributed(seed=0)
    yield
    runtime.destroy()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("recompute,modules", [("none", ()), ("full", ()), *(("selective", m) for m in SELECTIVE_SETS)])
def test_activations_and_peak_of_a_cpu_step(runtime_single, family, recompute, modules):
    """Each family's tiny model on a packed row of two samples with three images: the bytes autograd saves
    are the predicted activations (within 1%), the peak of forward + backward above the model states the
    predicted activations plus backward temporaries (within 5%), under every recompute mode and module set."""
    from launch.tune.measure import measure_step, row_batch
    from megatron_vlm.models.registry import get_family

    fam = get_family(family)
    config = fam.config_from_hf(fam.tiny_config(num_layers=2).to_dict(), recompute=recompute,
                                recompute_modules=modules)
    row = Row((140, 116), ((1, 8, 12), (1, 16, 8), (1, 8, 12)), 16)
    got = measure_step(fam.model_class(config), row_batch(row, config.arch), repeats=0)
    setup = Setup(precision="fp32", distributed_optimizer=False, overlap_grad_reduce=False)
    layout = Layout.make(recompute=recompute, recompute_modules=modules)
    acts = activations(config.arch, layout, setup, row, 0)
    kept = acts.total - acts.inputs
    assert kept == pytest.approx(got.saved, rel=0.01)
    assert kept + transient_bytes(config.arch, layout, setup, row, 0) == pytest.approx(got.peak, rel=0.05)
