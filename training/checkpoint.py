"""Training checkpoints: the same ``dist_checkpointing`` format as ``convert``, plus the training state.

``RUN_DIR/checkpoints/iter_NNNNNNN/`` holds the model (global tensors: any TP/PP loads them, and
``longvlm convert megatron-to-hf`` exports it), the optimizer (resharded by megatron-core on load),
the LR scheduler, each rank's RNG states, the iteration, the consumed rows and the resolved config;
``longvlm.json`` beside them; the tracker names the latest complete one. Saves are atomic
(``megatron_vlm.formats.checkpoint.save_sharded``), asynchronous on GPU, and only the newest
``keep_last`` are kept.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import (
    get_default_load_sharded_strategy,
    get_default_save_sharded_strategy,
)
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
    FullyParallelSaveStrategyWrapper,
)

from megatron_vlm.formats.checkpoint import (
    READ_ERRORS,
    CheckpointError,
    describe_read_error,
    iteration_dir_name,
    latest_iteration,
    model_meta,
    save_sharded,
)
from megatron_vlm.runtime import use_cuda
from training.model import ModelParts

CHECKPOINTS = "checkpoints"


@dataclass
class TrainState:
    """The counters a resumed run continues from (saved with every checkpoint)."""

    iteration: int = 0
    consumed_samples: int = 0
    recent_losses: list[float] = field(default_factory=list)  # the spike guard's window
    layout: dict = field(default_factory=dict)  # the ParallelLayout and world size it was saved with
    config_yaml: str = ""


def latest_checkpoint(run_dir: str | Path) -> int | None:
    """The iteration a run in ``run_dir`` resumes from (``None``: no complete checkpoint yet)."""
    iteration = latest_iteration(Path(run_dir) / CHECKPOINTS)
    return None if iteration in (None, "release") else int(iteration)


def _rng_state() -> dict:
    state = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if use_cuda():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and use_cuda():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _unreadable(path: str, err: BaseException) -> CheckpointError:
    """A checkpoint torch's reader fails on (several types for missing or cut files, a ``BaseException`` too)."""
    return CheckpointError(f"{path}: cannot resume from it ({describe_read_error(err)})")


class Checkpointer:
    """Saves and restores a run's model, optimizer, scheduler, RNG and :class:`TrainState`."""

    def __init__(self, run_dir: str | Path, parts: ModelParts, optimizer, scheduler, *, keep_last: int,
                 async_save: bool, source: dict | None = None):
        self.root = Path(run_dir) / CHECKPOINTS
        self.parts, self.optimizer, self.scheduler = parts, optimizer, scheduler
        self.keep_last, self.source = keep_last, source or {}
        self.queue = None
        if async_save and use_cuda():
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.queue = AsyncCallsQueue()

    # -- what a checkpoint holds ----------------------------------------------------------------

    def _model_state(self) -> dict:
        """The unwrapped chunks' tensors: keys as ``convert`` writes them (no DDP ``module.`` prefix)."""
        chunks = self.parts.unwrapped()
        if len(chunks) == 1:
            return {"model": chunks[0].sharded_state_dict()}
        return {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}

    def _state(self, train_state: TrainState, *, loading: bool, with_rng: bool = True) -> dict:
        state = self._model_state()
        state["optimizer"] = self.optimizer.sharded_state_dict(state, is_loading=loading)
        state["scheduler"] = self.scheduler.state_dict()
        state["train_state"] = asdict(train_state)
        if with_rng:
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            state["rng"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
        return state

    def _dp_cp(self):
        return ps.get_data_parallel_group(with_context_parallel=True)

    # -- save -----------------------------------------------------------------------------------

    def save(self, train_state: TrainState) -> None:
        """Checkpoint ``train_state.iteration`` (in the background on GPU); older ones beyond ``keep_last`` go."""
        self.finalize(blocking=True)  # one save in flight at a time
        strategy = FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(), self._dp_cp())
        meta = model_meta(self.parts.unwrapped()[0], self.source)
        request = save_sharded(self._state(train_state, loading=False), self.root, train_state.iteration, meta,
                               strategy=strategy, async_save=self.queue is not None)
        if request is None:
            self._prune()
        else:
            request.add_finalize_fn(self._prune)
            self.queue.schedule_async_request(request)

    def finalize(self, blocking: bool = False) -> None:
        """Commit background saves that have finished (all of them with ``blocking``)."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=blocking)

    def _prune(self) -> None:
        if torch.distributed.get_rank() != 0:
            return
        latest = latest_iteration(self.root)
        done = sorted(int(p.name[5:]) for p in self.root.glob("iter_*") if p.name[5:].isdigit())
        for iteration in [i for i in done if i != latest][: max(0, len(done) - self.keep_last)]:
            shutil.rmtree(self.root / iteration_dir_name(iteration), ignore_errors=True)
        for stale in self.root.glob(".iter_*.tmp"):  # saves a crash cut short (only ours live here)
            if latest is None or stale.name != f".{iteration_dir_name(latest)}.tmp":
                shutil.rmtree(stale, ignore_errors=True)

    # -- load -----------------------------------------------------------------------------------

    def latest(self) -> int | None:
        return latest_checkpoint(self.root.parent)

    def load(self, layout: dict) -> TrainState:
        """Restore the latest checkpoint into the model, optimizer and scheduler (any layout); the RNG
        states too when it was saved with this very ``layout`` (else they stay freshly seeded)."""
        iteration = self.latest()
        if iteration is None:
            raise CheckpointError(f"{self.root}: no checkpoint to resume from")
        path = str(self.root / iteration_dir_name(iteration))
        try:
            saved = dist_checkpointing.load_common_state_dict(path)["train_state"]
        except READ_ERRORS as err:
            raise _unreadable(path, err) from None
        same_layout = saved["layout"] == layout
        request = self._state(TrainState(), loading=True, with_rng=same_layout)
        strategy = FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(path), self._dp_cp())
        try:
            loaded = dist_checkpointing.load(request, path, strategy)
        except READ_ERRORS as err:
            raise _unreadable(path, err) from None
        chunks = self.parts.unwrapped()
        for i, chunk in enumerate(chunks):
            chunk.load_state_dict(loaded["model" if len(chunks) == 1 else f"model{i}"])
        self.optimizer.load_state_dict(loaded["optimizer"])
        self.scheduler.load_state_dict(loaded["scheduler"])
        if same_layout:
            _set_rng_state(loaded["rng"])
        return TrainState(**loaded["train_state"])
