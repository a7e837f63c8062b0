"""megatron_vlm.runtime: launcher environment, the device decision (CUDA faked), the CPU RNG tracker,
TP=2 / PP=2 equivalence on gloo."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.distributed import read_rank_results, run_distributed

from megatron_vlm import runtime

# --------------------------------------------------------------------------- environment


def test_torchrun_variables():
    env = runtime.read_dist_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                                 "MASTER_ADDR": "node7", "MASTER_PORT": "1234"})
    assert env == runtime.DistEnv(3, 8, 1, "node7", 1234, "torchrun", local_world_size=4)


def test_slurm_variables_use_first_node_and_job_port():
    env = runtime.read_dist_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                                 "SLURM_JOB_NODELIST": "gpu[007-009,012],cpu1", "SLURM_JOB_ID": "123456"})
    assert env == runtime.DistEnv(5, 16, 1, "gpu007", 20000 + 123456 % 20000, "slurm", local_world_size=2)


@pytest.mark.parametrize(("tasks_per_node", "node", "local"), [("4(x3)", "2", 4), ("2(x2),1", "2", 1), ("8", "0", 8)])
def test_slurm_tasks_on_this_node(tasks_per_node, node, local):
    env = runtime.read_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "13", "SLURM_NODELIST": "n[1-3]",
                                 "SLURM_STEP_TASKS_PER_NODE": tasks_per_node, "SLURM_NODEID": node})
    assert env.local_world_size == local


def test_slurm_step_values_win_over_the_allocation():
    env = runtime.read_dist_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2",
                                 "SLURM_JOB_NODELIST": "n[1-4]", "SLURM_STEP_NODELIST": "n[3-4]"})
    assert (env.world_size, env.master_addr) == (2, "n3")


def test_slurm_master_port_and_addr_override():
    env = runtime.read_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "a1",
                                 "MASTER_PORT": "4000", "MASTER_ADDR": "10.0.0.1"})
    assert (env.master_addr, env.master_port, env.local_rank) == ("10.0.0.1", 4000, 0)


def test_torchrun_inside_slurm_wins():
    env = runtime.read_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_NODELIST": "a1",
                                 "RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "b2", "MASTER_PORT": "9"})
    assert (env.launcher, env.rank, env.world_size, env.master_addr) == ("torchrun", 1, 4, "b2")


def test_no_launcher_means_one_process():
    assert runtime.read_dist_env({}) == runtime.DistEnv(0, 1, 0, "127.0.0.1", 0, "single", local_world_size=1)


def test_slurm_without_nodelist_is_a_clear_error():
    with pytest.raises(ValueError, match="SLURM_STEP_NODELIST"):
        runtime.read_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


@pytest.mark.parametrize(("nodelist", "hosts"), [
    ("node1", ["node1"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("gpu[08-10,15],login", ["gpu08", "gpu09", "gpu10", "gpu15", "login"]),
    ("a[1-2]-ib[0,3]", ["a1-ib0", "a1-ib3", "a2-ib0", "a2-ib3"]),
    ("x1,y[001-002]", ["x1", "y001", "y002"]),
])
def test_expand_slurm_nodelist(nodelist, hosts):
    assert runtime.expand_slurm_nodelist(nodelist) == hosts


# --------------------------------------------------------------------------- the device decision
# CUDA is faked where the code asks for it (torch.cuda.is_available / device_count / set_device): the
# decision, and what follows it, must be right on GPU machines this suite does not run on.


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n)``: torch reports ``n`` GPUs; returns the list ``torch.cuda.set_device`` calls append to."""
    chosen: list[int] = []

    def fake(count: int) -> list[int]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        return chosen

    return fake


def _on_node(local_rank: int, local_world_size: int) -> runtime.DistEnv:
    return runtime.DistEnv(local_rank, local_world_size, local_rank, "127.0.0.1", 1, "torchrun", local_world_size)


@pytest.mark.parametrize(("gpus", "choice", "local_rank", "local_world_size", "gpu"), [
    (0, "auto", 0, 1, None),  # CPU-only torch
    (1, "auto", 0, 1, 0),  # one process, one GPU
    (1, "cpu", 0, 1, None),  # the caller pins the CPU (this suite does)
    (1, "auto", 0, 2, None),  # 2 ranks, 1 GPU: rank 0 has one, but NCCL needs one per rank: all gloo
    (1, "auto", 1, 2, None),
    (8, "auto", 5, 8, 5),  # a full node: each rank its own GPU
    (4, "auto", 3, 8, None),  # 8 tasks on 4 GPUs
])
def test_device_decision(fake_gpus, gpus, choice, local_rank, local_world_size, gpu):
    fake_gpus(gpus)
    placement = runtime.decide_placement(_on_node(local_rank, local_world_size), choice)
    assert (placement.cuda, placement.gpu) == (gpu is not None, gpu)
    assert placement.backend == ("nccl" if gpu is not None else "gloo")


def test_slurm_tasks_bound_to_their_own_gpu_use_it(fake_gpus, monkeypatch):
    """``srun --gpus-per-task 1``: each of 8 tasks on the node sees one GPU (its own) as cuda:0."""
    fake_gpus(1)
    task = runtime.DistEnv(13, 16, 5, "n1", 1, "slurm", 8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert (runtime.decide_placement(task, "auto").cuda, runtime.decide_placement(task, "auto").gpu) == (True, 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # no binding: 8 tasks would share the one GPU
    assert not runtime.decide_placement(task, "auto").cuda


def test_device_choice_cuda_refuses_to_fall_back_and_bad_values_are_named(fake_gpus, monkeypatch):
    from megatron_vlm.errors import ConfigError

    fake_gpus(1)
    with pytest.raises(ConfigError, match="2 processes on this node but 1 GPU"):
        runtime.decide_placement(_on_node(0, 2), "cuda")
    fake_gpus(0)
    with pytest.raises(ConfigError, match="LONGVLM_DEVICE=cuda, but no CUDA GPU"):
        runtime.decide_placement(_on_node(0, 1), "cuda")
    monkeypatch.setenv(runtime.DEVICE_ENV, "gpu")
    with pytest.raises(ConfigError, match="LONGVLM_DEVICE='gpu': choose one of auto, cpu, cuda"):
        runtime.decide_placement(_on_node(0, 1))


def test_the_suite_pins_the_cpu_on_a_gpu_machine(fake_gpus):
    """conftest.py's pin holds with a GPU present, for this process and what it starts (the environment)."""
    import os

    fake_gpus(1)
    assert os.environ[runtime.DEVICE_ENV] == "cpu"
    assert not runtime.use_cuda() and runtime.device() == torch.device("cpu")


def test_the_decision_drives_shims_device_init_and_te_check(fake_gpus, monkeypatch):
    """One decision, followed everywhere: CUDA -> set_device(local rank), no shims, cuda device, weights
    initialized on the device; CPU -> shims, cpu device, CPU initialization, the te backend refused."""
    from megatron.core.tensor_parallel import layers

    from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf
    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config
    from megatron_vlm.runtime import placement
    from megatron_vlm.runtime.transformer_engine import transformer_engine_error

    hf = tiny_qwen25vl_config().to_dict()
    chosen = fake_gpus(2)
    try:
        monkeypatch.setenv(runtime.DEVICE_ENV, "auto")
        assert placement.settle_placement(_on_node(1, 2)).cuda and chosen == [1]
        assert layers.torch is torch  # shims removed: megatron-core sees the real torch.cuda
        assert runtime.use_cuda() and runtime.device() == torch.device("cuda", 1)
        assert not qwen25vl_config_from_hf(hf).language.use_cpu_initialization
        assert not placement.settle_placement(_on_node(1, 2), "cpu").cuda  # a caller pins the CPU (verify)
        assert layers.torch is not torch and runtime.device() == torch.device("cpu")
        assert placement.settle_placement(_on_node(1, 2)).cuda and layers.torch is torch and chosen == [1, 1]

        monkeypatch.setenv(runtime.DEVICE_ENV, "cpu")
        assert not placement.settle_placement(_on_node(1, 2)).cuda and chosen == [1, 1]
        assert layers.torch is not torch and layers.torch.cuda.current_device() == torch.device("cpu")
        assert runtime.device() == torch.device("cpu") and not runtime.use_cuda()
        assert qwen25vl_config_from_hf(hf).language.use_cpu_initialization
        assert "LONGVLM_DEVICE=cpu" in transformer_engine_error()

        monkeypatch.setenv(runtime.DEVICE_ENV, "auto")  # 3 ranks, 2 GPUs: the CPU, with a warning
        with pytest.warns(UserWarning, match="3 processes on this node but 2 GPU"):
            assert placement.settle_placement(_on_node(0, 3)).backend == "gloo"
        assert layers.torch is not torch and chosen == [1, 1]
    finally:
        placement.unsettle_placement()
        runtime.apply_cpu_shims()  # the state the rest of this CPU-pinned session expects


# --------------------------------------------------------------------------- one process


@pytest.fixture
def single_process():
    runtime.initialize_distributed(seed=1234, environ={})
    yield
    runtime.destroy()


def test_single_process_layout_and_idempotence(single_process):
    from megatron.core import parallel_state as ps

    assert torch.distributed.get_world_size() == 1
    assert torch.distributed.get_backend() == "gloo"  # the suite pins the CPU (conftest.py)
    assert ps.get_tensor_model_parallel_world_size() == 1
    group = ps.get_tensor_model_parallel_group()
    runtime.initialize_distributed(seed=1234, environ={})  # same layout: nothing rebuilt
    assert ps.get_tensor_model_parallel_group() is group
    assert runtime.device() == torch.device("cpu")


def test_rng_tracker_fork_is_reproducible_and_isolated(single_process):
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    states = tracker.get_states()
    before = torch.get_rng_state()
    with tracker.fork():
        first = torch.nn.functional.dropout(torch.ones(64, device=runtime.device()), 0.5)
    # the default stream is untouched by what happened inside the fork
    assert torch.equal(torch.get_rng_state(), before)
    with tracker.fork():
        second = torch.nn.functional.dropout(torch.ones(64, device=runtime.device()), 0.5)
    assert not torch.equal(first, second)  # the tracked stream advanced
    tracker.set_states(states)
    with tracker.fork():
        again = torch.nn.functional.dropout(torch.ones(64, device=runtime.device()), 0.5)
    assert torch.equal(first, again)


# --------------------------------------------------------------------------- 2 processes, gloo


@pytest.fixture(scope="module")
def parallel_step(tmp_path_factory):
    """Both ranks' results of tests/workers/gpt_parallel_step.py (references and every layout)."""
    out = tmp_path_factory.mktemp("parallel_step")
    run_distributed("tests/workers/gpt_parallel_step.py", 2, ["--out", out], timeout=300)
    return read_rank_results(out, 2)


@pytest.mark.slow
def test_reference_step_is_sane(parallel_step):
    assert [(r["rank"], r["world_size"], r["launcher"], r["backend"]) for r in parallel_step] == [
        (0, 2, "torchrun", "gloo"), (1, 2, "torchrun", "gloo")]
    for ref in parallel_step[0]["layouts"].values():
        # O(1) logits on random labels: worse than a uniform guess over the 128-token vocabulary
        assert math.isfinite(ref["ref_loss"]) and ref["ref_loss"] > math.log(128)
        # every parameter's gradient and update is far above float32 noise, so relative errors mean something
        assert ref["ref_grad_scale_min"] > 1e-3 and ref["ref_update_scale_min"] > 1e-2
        assert ref["ref_grad_norm"] > 1.0  # above clip_grad: the clipping coefficient is in every update


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2", "pp2", "pp2_tied", "tp2_recompute"])
def test_parallel_layout_matches_single_device(parallel_step, layout):
    """Same loss, gradient norm, gradients and SGD updates as TP=1, PP=1 from the same weights."""
    for rank in parallel_step:
        got = rank["layouts"][layout]
        assert got["loss"] == pytest.approx(got["ref_loss"], rel=1e-6)
        assert got["grad_norm"] == pytest.approx(got["ref_grad_norm"], rel=1e-5)
        assert got["grads_rel_diff"] < 1e-5  # gathered through a resharded dist checkpoint
        assert got["update_rel_diff"] < 1e-5  # lr * clip * grad: the magnitude, not only the sign
        assert got["broadcast_matches"]


def test_cpu_shims_are_scoped_to_listed_modules(single_process):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import layers

    assert parallel_state.torch is torch  # modules not listed see the real torch
    assert layers.torch.cuda.current_device() == torch.device("cpu")
    assert layers.torch.zeros(2, device="cuda").device.type == "cpu"
    assert layers.torch.cuda.synchronize() is None
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError)):  # the real torch.cuda is untouched
            torch.cuda.current_device()


def test_default_causal_mask_equals_explicit_mask(single_process):
    """Without a mask, megatron-core builds its default causal mask (device='cuda' in its source)."""
    from workers.gpt_parallel_step import build_model, global_batch

    ddp, _ = build_model(1, 1)
    batch = global_batch()[0]
    with torch.no_grad():
        explicit = ddp(batch["tokens"], batch["position_ids"], batch["mask"])
        default = ddp(batch["tokens"], batch["position_ids"], None)
        no_mask = ddp(batch["tokens"], batch["position_ids"], torch.zeros_like(batch["mask"]))
    torch.testing.assert_close(default, explicit, rtol=0, atol=1e-6)
    assert (no_mask - explicit).abs().max() > 1e-3  # the mask matters: it is really applied


# --------------------------------------------------------------------------- the launcher helper

_ENV_DUMP = """
import json, os, sys, time
keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS"]
path = os.path.join(sys.argv[1], "rank%s.json" % os.environ["RANK"])
with open(path + ".tmp", "w") as f:
    json.dump({k: os.environ[k] for k in keys}, f)
os.replace(path + ".tmp", path)
if os.environ["RANK"] == "1":
    for _ in range(600):  # let rank 0 write its file before failing
        if os.path.exists(os.path.join(sys.argv[1], "rank0.json")):
            break
        time.sleep(0.05)
    sys.exit("rank 1 gives up")
"""


def test_run_distributed_sets_torchrun_env_and_reports_failures(tmp_path):
    script = tmp_path / "dump_env.py"
    script.write_text(_ENV_DUMP)
    with pytest.raises(RuntimeError, match="rank 1 gives up"):
        run_distributed(script, 2, [tmp_path], timeout=60)
    dumps = read_rank_results(tmp_path, 2)
    assert [(d["RANK"], d["LOCAL_RANK"], d["WORLD_SIZE"]) for d in dumps] == [("0", "0", "2"), ("1", "1", "2")]
    assert dumps[0]["MASTER_PORT"] == dumps[1]["MASTER_PORT"] and dumps[0]["OMP_NUM_THREADS"] == "1"


def test_device_side_initialization_uses_the_tracker(single_process):
    """``use_cpu_initialization=False`` allocates on ``current_device()`` and draws the weights in
    the model-parallel RNG stream; megatron-core's default init is N(0, 0.02)."""
    from workers.gpt_parallel_step import build_model

    before = torch.get_rng_state()
    ddp, _ = build_model(1, 1, use_cpu_initialization=False)
    assert torch.equal(torch.get_rng_state(), before)  # the default stream was not used
    fc1 = ddp.module.decoder.layers[0].mlp.linear_fc1.weight
    assert fc1.device == runtime.device() and fc1.shape == (256, 64)
    assert abs(fc1.std().item() - 0.02) < 0.002 and abs(fc1.mean().item()) < 0.002
