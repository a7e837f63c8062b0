"""Megatron-Core ``dist_checkpointing`` (torch_dist) checkpoints of Qwen2.5-VL: layout, save, load.

Layout (Megatron-LM's)::

    CKPT_DIR/latest_checkpointed_iteration.txt   "0" (or "release")
    CKPT_DIR/iter_0000000/                       torch_dist: metadata.json, common.pt, .metadata, *.distcp
    CKPT_DIR/iter_0000000/longvlm.json           HF config, dtypes, layout (see docs/checkpoints.md)

Tensors are stored GLOBAL (one ``ShardedTensor`` per key with its full shape), so any TP/PP can
load them: megatron-core reads each rank's slice from its offsets.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from checkpoint_tools.hf_io import CheckpointError

# torch.distributed.checkpoint wraps reader failures in CheckpointException, a BaseException
_READ_ERRORS = (Exception, CheckpointException)
TRACKER_NAME = "latest_checkpointed_iteration.txt"
META_NAME = "longvlm.json"
META_FORMAT = "longvlm/qwen2_5_vl-megatron"
META_VERSION = 1


def _describe(err: BaseException) -> str:
    """The root cause of a reader error in one line (not torch's embedded per-rank tracebacks)."""
    if isinstance(err, CheckpointException) and err.failures:
        failure = next(iter(err.failures.values()))
        err = failure[0] if isinstance(failure, tuple) else failure
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def iteration_dir_name(iteration: int | str) -> str:
    return "release" if iteration == "release" else f"iter_{int(iteration):07d}"


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """``torch.distributed`` as ``dist_checkpointing`` needs it: the caller's group if initialized,
    else a one-process group (``megatron_vlm.runtime``, with its CPU shims) for the block."""
    import torch.distributed as dist

    from megatron_vlm import runtime

    if dist.is_initialized():
        runtime.apply_cpu_shims()
        yield
        return
    runtime.initialize_distributed(environ={})  # one process, whatever launcher variables are set
    try:
        yield
    finally:
        runtime.destroy()


def save_global_tensors(tensors: dict[str, torch.Tensor], iter_dir: Path) -> None:
    """Save whole tensors as torch_dist ``ShardedTensor``s (no sharding: rank 0 holds the full tensor)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    sharded = {k: ShardedTensor.from_rank_offsets(k, t, replica_id=0) for k, t in tensors.items()}
    iter_dir.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(sharded, str(iter_dir))


def write_tracker(root: Path, iteration: int | str) -> None:
    (root / TRACKER_NAME).write_text(f"{iteration}\n")


@dataclass
class MegatronCheckpoint:
    """A torch_dist checkpoint directory: its iteration, ``longvlm.json`` and tensor metadata."""

    root: Path
    iter_dir: Path
    meta: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]

    @classmethod
    def open(cls, root: str | Path, iteration: int | str | None = None) -> MegatronCheckpoint:
        """Find the iteration (``iteration`` or the tracker file), read its metadata, or raise
        :class:`CheckpointError` naming what is wrong."""
        from megatron.core import dist_checkpointing

        root = Path(root)
        if iteration is None:
            tracker = root / TRACKER_NAME
            if not tracker.is_file():
                raise CheckpointError(f"{root}: not a Megatron checkpoint (no {TRACKER_NAME})")
            iteration = tracker.read_text().strip()
            if iteration != "release" and not iteration.isdigit():
                raise CheckpointError(f"{tracker}: corrupt (expected an iteration number, got {iteration!r})")
        iter_dir = root / iteration_dir_name(iteration)
        if not (iter_dir / "metadata.json").is_file():
            raise CheckpointError(f"{iter_dir}: missing or incomplete torch_dist checkpoint (no metadata.json)")
        meta_file = iter_dir / META_NAME
        if not meta_file.is_file():
            raise CheckpointError(f"{iter_dir}: no {META_NAME} (the HF config and layout this converter records); "
                                  "write it with `longvlm convert hf-to-megatron` or copy it from the initial checkpoint")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{meta_file}: corrupt JSON ({err})") from None
        if meta.get("format") != META_FORMAT:
            raise CheckpointError(f"{meta_file}: not a {META_FORMAT} checkpoint (format={meta.get('format')!r})")
        try:
            tensors = dist_checkpointing.load_tensors_metadata(str(iter_dir))
        except _READ_ERRORS as err:  # torch.distributed.checkpoint raises several types for a bad .metadata
            raise CheckpointError(f"{iter_dir}: corrupt torch_dist metadata ({_describe(err)})") from None
        shapes = {k: tuple(t.global_shape) for k, t in tensors.items()}
        dtypes = {k: t.dtype for k, t in tensors.items()}
        return cls(root, iter_dir, meta, shapes, dtypes)

    def load(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Read whole tensors ``keys`` (only those: the rest of the checkpoint stays on disk)."""
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing import ShardedTensor

        request = {k: ShardedTensor.from_rank_offsets(k, torch.empty(self.shapes[k], dtype=self.dtypes[k]),
                                                      replica_id=0) for k in keys}
        try:
            loaded = dist_checkpointing.load(request, str(self.iter_dir))
        except _READ_ERRORS as err:  # a truncated or missing .distcp file surfaces from torch's reader
            raise CheckpointError(f"{self.iter_dir}: cannot read tensors, a file is truncated or corrupt "
                                  f"({_describe(err)})") from None
        return {k: loaded[k] for k in keys}


def load_into_model(model: torch.nn.Module, ckpt: MegatronCheckpoint | str | Path,
                    iteration: int | str | None = None) -> None:
    """Load a converted checkpoint into a Megatron model at any TP/PP (call on every rank).

    Asks the model for its sharded state dict with per-layer keys and global layer numbers
    (``non_homogeneous_layers``, the key format of docs/checkpoints.md), loads it with
    ``dist_checkpointing.load`` (each rank reads its own slices; the vocabulary rows are matched
    with ``allow_shape_mismatch``) and copies it into the model. ``_extra_state`` entries (no
    weights: ``None`` for the local layers, FP8 metadata for Transformer Engine ones) are not part
    of a converted checkpoint and keep the model's values. A weight the checkpoint lacks is an error
    naming it.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedBase

    if not isinstance(ckpt, MegatronCheckpoint):
        ckpt = MegatronCheckpoint.open(ckpt, iteration)
    sharded = model.sharded_state_dict(metadata={"non_homogeneous_layers": True})
    sharded = {k: v for k, v in sharded.items() if not k.endswith("_extra_state")}
    missing = sorted({v.key for v in sharded.values() if isinstance(v, ShardedBase) or hasattr(v, "key")}
                     - set(ckpt.shapes))
    if missing:
        raise CheckpointError(f"{ckpt.iter_dir}: the model needs tensor(s) the checkpoint lacks: {', '.join(missing[:10])}")
    loaded = dist_checkpointing.load(sharded, str(ckpt.iter_dir))
    result = model.load_state_dict(loaded, strict=False)
    absent = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if absent or result.unexpected_keys:
        raise CheckpointError(f"{ckpt.iter_dir}: loading left parameters unset {absent[:10]} "
                              f"or unexpected {result.unexpected_keys[:10]}")
