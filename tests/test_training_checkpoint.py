"""``training.checkpoint``: which iteration a run resumes from, what a save holds and restores, ``keep_last``,
atomic saves, refusals. One process; the model, optimizer and scheduler are small stand-ins with the
interfaces the :class:`Checkpointer` uses (megatron-core's sharded state dicts)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from megatron.core.dist_checkpointing import ShardedTensor

from megatron_vlm.formats import checkpoint as formats
from megatron_vlm.formats.checkpoint import CheckpointError
from megatron_vlm.parallel import ParallelLayout
from training.checkpoint import Checkpointer, TrainState, latest_checkpoint

LAYOUT = {"tp": 1, "pp": 1, "cp": 1, "world": 1}


class Model(torch.nn.Module):
    """A chunk: two tensors under megatron-style sharded keys, and the config ``longvlm.json`` is made from."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4, 3))
        self.bias = torch.nn.Parameter(torch.zeros(3))
        self.model_config = SimpleNamespace(to_hf_config=lambda: {"model_type": "stand_in", "hidden_size": 3},
                                            language=SimpleNamespace(params_dtype=torch.float32),
                                            layout=ParallelLayout(), vocab_size=4)

    def sharded_state_dict(self):
        return {name: ShardedTensor.from_rank_offsets(f"model.{name}", p, replica_id=0)
                for name, p in self.named_parameters()}


class Optimizer:
    """Adam-like state: a moment tensor (sharded) and a step count (common state)."""

    def __init__(self):
        self.exp_avg, self.step = torch.zeros(4, 3), 0

    def sharded_state_dict(self, model_state, is_loading=False):
        return {"exp_avg": ShardedTensor.from_rank_offsets("optimizer.exp_avg", self.exp_avg, replica_id=0),
                "step": self.step}

    def load_state_dict(self, state):
        self.exp_avg.copy_(state["exp_avg"])
        self.step = state["step"]


class Scheduler:
    def __init__(self):
        self.num_steps = 0

    def state_dict(self):
        return {"num_steps": self.num_steps}

    def load_state_dict(self, state):
        self.num_steps = state["num_steps"]


def make(run_dir, keep_last: int = 2, source: dict | None = None) -> tuple[Checkpointer, Model, Optimizer, Scheduler]:
    model, optimizer, scheduler = Model(), Optimizer(), Scheduler()
    parts = SimpleNamespace(unwrapped=lambda: [model])
    return (Checkpointer(run_dir, parts, optimizer, scheduler, keep_last=keep_last, async_save=True, source=source),
            model, optimizer, scheduler)


def set_values(model: Model, optimizer: Optimizer, scheduler: Scheduler, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.copy_(torch.arange(3.0) + value)
    optimizer.exp_avg.fill_(-value)
    optimizer.step = int(value)
    scheduler.num_steps = 10 * int(value)


def state(iteration: int, **fields) -> TrainState:
    return TrainState(iteration=iteration, consumed_samples=8 * iteration, layout=dict(LAYOUT), **fields)


def saved_iterations(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


# -- which iteration is the latest -------------------------------------------------------------------


def test_latest_checkpoint_is_the_one_the_tracker_names(tmp_path):
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None  # no checkpoints yet
    root.mkdir()
    for name in ("iter_0000010", "iter_0000020", ".iter_0000030.tmp"):  # 30: a save cut short
        (root / name).mkdir()
    assert latest_checkpoint(tmp_path) is None  # directories without a tracker are not complete saves
    (root / "latest_checkpointed_iteration.txt").write_text("20\n")
    assert latest_checkpoint(tmp_path) == 20
    (root / "latest_checkpointed_iteration.txt").write_text("release\n")
    assert latest_checkpoint(tmp_path) is None  # a converted model, not a run to resume
    (root / "latest_checkpointed_iteration.txt").write_text("2O\n")
    with pytest.raises(CheckpointError, match=r"latest_checkpointed_iteration.txt: corrupt \(expected an iteration "
                                              r"number, got '2O'\)"):
        latest_checkpoint(tmp_path)


# -- save and load ----------------------------------------------------------------------------------


def test_load_restores_model_optimizer_scheduler_and_train_state(megatron_single, tmp_path):
    ckpt, model, optimizer, scheduler = make(tmp_path, source={"hf_dir": "/models/base"})
    set_values(model, optimizer, scheduler, 3.0)
    ckpt.save(state(3, recent_losses=[2.5, 2.25], config_yaml="train:\n  lr: 1.0e-5\n"))
    assert ckpt.queue is None  # asynchronous on GPU only: on the CPU the save is complete when save() returns
    assert ckpt.latest() == latest_checkpoint(tmp_path) == 3
    meta = formats.read_json(tmp_path / "checkpoints" / "iter_0000003" / "longvlm.json", CheckpointError)
    assert meta["source"] == {"hf_dir": "/models/base"} and meta["hf_config"]["model_type"] == "stand_in"

    fresh, model2, optimizer2, scheduler2 = make(tmp_path)
    restored = fresh.load(dict(LAYOUT))
    assert restored == state(3, recent_losses=[2.5, 2.25], config_yaml="train:\n  lr: 1.0e-5\n")
    assert torch.equal(model2.weight, torch.full((4, 3), 3.0)) and torch.equal(model2.bias, torch.tensor([3., 4., 5.]))
    assert torch.equal(optimizer2.exp_avg, torch.full((4, 3), -3.0)) and optimizer2.step == 3
    assert scheduler2.num_steps == 30


def test_rng_states_come_back_only_at_the_same_layout(megatron_single, tmp_path):
    ckpt, *_ = make(tmp_path)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    ckpt.save(state(1))
    after_save = draws()
    assert draws() != after_save  # the generators moved on
    ckpt.load(dict(LAYOUT))
    assert draws() == after_save  # the saved states, restored
    draws()
    ckpt.load({**LAYOUT, "tp": 2})  # another layout: the RNG states are left as they are (freshly seeded)
    assert draws() != after_save


def test_keep_last_keeps_the_newest_complete_saves(megatron_single, tmp_path):
    ckpt, model, optimizer, scheduler = make(tmp_path, keep_last=2)
    for it in (1, 2, 3, 4):
        set_values(model, optimizer, scheduler, float(it))
        ckpt.save(state(it))
    assert saved_iterations(tmp_path) == ["iter_0000003", "iter_0000004"]
    one, *_ = make(tmp_path, keep_last=1)
    one.save(state(5))
    assert saved_iterations(tmp_path) == ["iter_0000005"]
    assert latest_checkpoint(tmp_path) == 5


def test_a_save_cut_short_is_never_resumed_from(megatron_single, tmp_path, monkeypatch):
    """A crash after the files are written but before the rename and tracker leaves the previous
    checkpoint as the latest; the next save clears the leftover."""
    ckpt, model, optimizer, scheduler = make(tmp_path)
    set_values(model, optimizer, scheduler, 1.0)
    ckpt.save(state(1))

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    set_values(model, optimizer, scheduler, 2.0)
    with monkeypatch.context() as patch:
        patch.setattr(formats, "write_json", crash)  # longvlm.json: the first step of the commit
        with pytest.raises(OSError, match="No space left"):
            ckpt.save(state(2))
    root = tmp_path / "checkpoints"
    assert (root / ".iter_0000002.tmp").is_dir() and not (root / "iter_0000002").exists()
    assert latest_checkpoint(tmp_path) == 1

    resumed, model2, optimizer2, _ = make(tmp_path)
    assert resumed.load(dict(LAYOUT)).iteration == 1
    assert torch.equal(model2.weight, torch.full((4, 3), 1.0)) and optimizer2.step == 1

    (root / ".iter_0000007.tmp").mkdir()  # another crashed save of this run
    ckpt.save(state(3))
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    assert saved_iterations(tmp_path) == ["iter_0000001", "iter_0000003"]


# -- refusals -------------------------------------------------------------------------------------------


def test_nothing_to_resume_from_is_an_error_naming_the_directory(megatron_single, tmp_path):
    ckpt, *_ = make(tmp_path)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'checkpoints'}: no checkpoint to resume from$"):
        ckpt.load(dict(LAYOUT))


def test_a_damaged_checkpoint_is_an_error_naming_it(megatron_single, tmp_path):
    ckpt, *_ = make(tmp_path)
    ckpt.save(state(4))
    iter_dir = tmp_path / "checkpoints" / "iter_0000004"
    for data in iter_dir.glob("*.distcp"):
        data.write_bytes(data.read_bytes()[:10])  # cut off
    with pytest.raises(CheckpointError, match=rf"^{iter_dir}: cannot resume from it \(\w+"):
        make(tmp_path)[0].load(dict(LAYOUT))


def test_a_damaged_common_state_is_an_error_naming_it(megatron_single, tmp_path):
    ckpt, *_ = make(tmp_path)
    ckpt.save(state(4))
    iter_dir = tmp_path / "checkpoints" / "iter_0000004"
    (iter_dir / "common.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"^{iter_dir}: cannot resume from it \(\w+"):
        make(tmp_path)[0].load(dict(LAYOUT))
