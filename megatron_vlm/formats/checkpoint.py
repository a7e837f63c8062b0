"""Megatron-Core ``dist_checkpointing`` (torch_dist) checkpoints of Qwen2.5-VL: layout, save, load.

Layout (Megatron-LM's)::

    CKPT_DIR/latest_checkpointed_iteration.txt   "0" (or "release")
    CKPT_DIR/iter_0000000/                       torch_dist: metadata.json, common.pt, .metadata, *.distcp
    CKPT_DIR/iter_0000000/longvlm.json           HF config, dtypes, layout (see docs/checkpoints.md)

Tensors are stored GLOBAL (each key with its full shape), so any TP/PP can load them:
megatron-core reads each rank's slice from its offsets. Decoder layers are stored the way
megatron-core's ``TransformerBlock.sharded_state_dict`` stores them by default: STACKED, one key
without the layer number (``language_model.decoder.layers.mlp.linear_fc2.weight``) whose first
axis is the global layer index. This module translates between that storage and the per-layer
names of the mapping tables (``...layers.{i}.mlp.linear_fc2.weight``); checkpoints with
per-layer keys (``non_homogeneous_layers``) are read as well.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from megatron_vlm.errors import LongVLMError
from megatron_vlm.models.registry import DEFAULT_FAMILY
from megatron_vlm.parallel import ParallelLayout
from megatron_vlm.utils.atomic import atomic_write, write_json
from megatron_vlm.utils.jsonl import read_json

# torch.distributed.checkpoint wraps reader failures in CheckpointException, a BaseException
READ_ERRORS = (Exception, CheckpointException)
TRACKER_NAME = "latest_checkpointed_iteration.txt"
META_NAME = "longvlm.json"
META_FORMAT = "longvlm/vlm-megatron"  # the model family is the recorded hf_config's model_type
META_VERSION = 2
READ_FORMATS = (META_FORMAT, f"longvlm/{DEFAULT_FAMILY}-megatron")  # version 1: before model families


class CheckpointError(LongVLMError, RuntimeError):
    """A checkpoint that cannot be read, written or converted; the message names the file and the reason."""


_LAYER_NAME = re.compile(r"^(?P<block>.+\.layers)\.(?P<i>\d+)\.(?P<rest>.+)$")
_STACKED_KEY = re.compile(r"^(?P<block>.+\.decoder\.layers)\.(?P<rest>[^\d].*)$")


@dataclass(frozen=True)
class Slot:
    """Where a per-layer name lives in storage: ``key`` and, for a stacked key, layer ``i`` of ``layers``."""

    key: str
    layer: int | None = None
    layers: int | None = None

    def sharded_tensor(self, data: torch.Tensor):
        """The chunk to save, as megatron-core saves a layer (a prepended layer axis)."""
        from megatron.core.dist_checkpointing import ShardedTensor

        if self.layer is None:
            return ShardedTensor.from_rank_offsets(self.key, data, replica_id=0)
        return ShardedTensor.from_rank_offsets(self.key, data, (0, self.layer, self.layers), replica_id=0,
                                               prepend_axis_num=1)

    def request(self, shape: tuple[int, ...], dtype: torch.dtype):
        """The chunk to load into, ``[1, *shape]`` for a layer. (A prepended axis would take
        megatron-core's grid path, which on one process cannot load some layers of a key only.)"""
        from megatron.core.dist_checkpointing import ShardedTensor

        if self.layer is None:
            return ShardedTensor.from_rank_offsets(self.key, torch.empty(shape, dtype=dtype), replica_id=0)
        return ShardedTensor.from_rank_offsets(self.key, torch.empty((1, *shape), dtype=dtype),
                                               (0, self.layer, self.layers), replica_id=0)


def _stacked_slots(names: list[str]) -> dict[str, Slot]:
    """Per-layer name -> its slot in megatron-core's stacked layout."""
    layers: dict[str, int] = {}
    for name in names:
        if m := _LAYER_NAME.match(name):
            block = m["block"]
            layers[block] = max(layers.get(block, 0), int(m["i"]) + 1)
    slots = {}
    for name in names:
        m = _LAYER_NAME.match(name)
        slots[name] = Slot(f"{m['block']}.{m['rest']}", int(m["i"]), layers[m["block"]]) if m else Slot(name)
    return slots


def _extra_state_objects(slots: dict[str, Slot]) -> dict[str, Any]:
    """``_extra_state`` of every ``linear_*`` module, as megatron-core's local layers save it
    (``None``; stacked like the weights), so that ``dist_checkpointing.load(model.sharded_state_dict())``
    finds every key it asks for."""
    from megatron.core.dist_checkpointing import ShardedObject

    objects = {}
    for name, slot in slots.items():
        module, _, _ = name.rpartition(".")
        if not module.rpartition(".")[2].startswith("linear_") or name.endswith("layer_norm_weight"):
            continue
        key = slot.key.rpartition(".")[0] + "._extra_state"
        shape, offset = ((slot.layers,), (slot.layer,)) if slot.layer is not None else ((1,), (0,))
        objects[f"{module}._extra_state"] = ShardedObject(key, None, shape, offset, replica_id=0)
    return objects


def describe_read_error(err: BaseException) -> str:
    """The root cause of a reader error in one line (not torch's embedded per-rank tracebacks)."""
    if isinstance(err, CheckpointException) and err.failures:
        failure = next(iter(err.failures.values()))
        err = failure[0] if isinstance(failure, tuple) else failure
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def iteration_dir_name(iteration: int | str) -> str:
    return "release" if iteration == "release" else f"iter_{int(iteration):07d}"


def save_global_tensors(tensors: dict[str, torch.Tensor], iter_dir: Path) -> None:
    """Save whole tensors (per-layer names) as one process: layers stacked as megatron-core does,
    plus the linear layers' ``_extra_state``."""
    from megatron.core import dist_checkpointing

    slots = _stacked_slots(list(tensors))
    sharded = {name: slots[name].sharded_tensor(t) for name, t in tensors.items()}
    sharded.update(_extra_state_objects(slots))
    iter_dir.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(sharded, str(iter_dir))


def latest_iteration(root: str | Path) -> int | str | None:
    """The iteration the tracker names (``"release"`` or a number), ``None`` without a tracker."""
    tracker = Path(root) / TRACKER_NAME
    if not tracker.is_file():
        return None
    iteration = tracker.read_bytes().decode("utf-8", "replace").strip()
    if iteration != "release" and not re.fullmatch(r"[0-9]{1,18}", iteration):
        raise CheckpointError(f"{tracker}: corrupt (expected an iteration number, got {iteration!r})")
    return iteration if iteration == "release" else int(iteration)


def write_tracker(root: Path, iteration: int | str) -> None:
    with atomic_write(root / TRACKER_NAME) as f:
        f.write(f"{iteration}\n")


def checkpoint_meta(hf_config: dict[str, Any], *, dtype: str, layout: ParallelLayout, vocab_size: int,
                    padded_vocab_size: int, source: dict[str, Any] | None = None,
                    make_vocab_size_divisible_by: int | None = None) -> dict[str, Any]:
    """The ``longvlm.json`` of a checkpoint (docs/checkpoints.md): the HF config the weights belong to
    (RoPE base included), their dtype, the layout they were written for, the vocabulary padding and
    the HF directory they came from (whose tokenizer and processor files an export copies)."""
    layout_record = dataclasses.asdict(layout)
    if make_vocab_size_divisible_by is not None:
        layout_record["make_vocab_size_divisible_by"] = make_vocab_size_divisible_by
    return {
        "format": META_FORMAT,
        "version": META_VERSION,
        "hf_config": hf_config,
        "source": dict(source or {}),
        "dtype": dtype,
        "layout": layout_record,
        "vocab_size": vocab_size,
        "padded_vocab_size": padded_vocab_size,
    }


def model_meta(model: torch.nn.Module, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """``checkpoint_meta`` of a family's model as it is now: the HF config it was built from with
    the RoPE base and length it is set up for (``VLModelConfig.to_hf_config``)."""
    config = model.model_config
    return checkpoint_meta(config.to_hf_config(), dtype=str(config.language.params_dtype).removeprefix("torch."),
                           layout=config.layout, vocab_size=config.vocab_size,
                           padded_vocab_size=config.vocab_size, source=source)


def _rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def save_sharded(sharded_state_dict: dict[str, Any], root: str | Path, iteration: int, meta: dict[str, Any], *,
                 strategy=None, async_save: bool = False):
    """``dist_checkpointing.save`` on every rank into a hidden directory beside ``root/iter_NNNNNNN``;
    then (rank 0) its ``longvlm.json``, one rename into place and the tracker, so a crash at any
    point leaves the previous checkpoint as the latest. ``async_save``: return megatron-core's
    ``AsyncRequest``, whose finalization commits (schedule it with an ``AsyncCallsQueue``)."""
    import shutil

    from megatron.core import dist_checkpointing

    root = Path(root)
    final = root / iteration_dir_name(iteration)
    tmp = root / f".{final.name}.tmp"
    if _rank0():
        shutil.rmtree(tmp, ignore_errors=True)  # a save of this iteration that a crash cut short
        tmp.mkdir(parents=True)
    _barrier()
    request = dist_checkpointing.save(sharded_state_dict, str(tmp), strategy, async_sharded_save=async_save)

    def commit() -> None:
        if _rank0():
            write_json(tmp / META_NAME, meta)
            if final.exists():  # an older run's save of the same iteration, never the tracker's
                shutil.rmtree(final)
            tmp.rename(final)
            write_tracker(root, iteration)

    if async_save:
        request.add_finalize_fn(commit)
        return request
    commit()
    _barrier()
    return None


def save_model(model: torch.nn.Module, root: str | Path, iteration: int, source: dict[str, Any] | None = None) -> Path:
    """Save a Megatron model of any family (weights only) as a checkpoint that ``load_into_model`` and
    ``megatron-to-hf`` read; call on every rank. ``source``: the HF directory record of the
    checkpoint it was loaded from (``MegatronCheckpoint.meta["source"]``)."""
    return save_sharded(model.sharded_state_dict(), root, iteration, model_meta(model, source))


@dataclass
class MegatronCheckpoint:
    """A torch_dist checkpoint directory: its iteration, ``longvlm.json`` and tensor metadata."""

    root: Path
    iter_dir: Path
    meta: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]  # per-layer name -> shape
    dtypes: dict[str, torch.dtype]
    slots: dict[str, Slot]

    @classmethod
    def open(cls, root: str | Path, iteration: int | str | None = None) -> MegatronCheckpoint:
        """Find the iteration (``iteration`` or the tracker file), read its metadata, or raise
        :class:`CheckpointError` naming what is wrong."""
        from megatron.core import dist_checkpointing

        root = Path(root)
        if iteration is None:
            iteration = latest_iteration(root)
            if iteration is None:
                raise CheckpointError(f"{root}: not a Megatron checkpoint (no {TRACKER_NAME})")
        iter_dir = root / iteration_dir_name(iteration)
        if not (iter_dir / "metadata.json").is_file():
            raise CheckpointError(f"{iter_dir}: missing or incomplete torch_dist checkpoint (no metadata.json)")
        meta_file = iter_dir / META_NAME
        if not meta_file.is_file():
            raise CheckpointError(f"{iter_dir}: no {META_NAME} (the HF config and layout this converter records); "
                                  "write it with `longvlm convert hf-to-megatron` or copy it from the initial checkpoint")
        meta = read_json(meta_file, CheckpointError)
        if meta.get("format") not in READ_FORMATS:
            raise CheckpointError(f"{meta_file}: not a {META_FORMAT} checkpoint (format={meta.get('format')!r})")
        try:
            tensors = dist_checkpointing.load_tensors_metadata(str(iter_dir))
        except READ_ERRORS as err:  # torch.distributed.checkpoint raises several types for a bad .metadata
            raise CheckpointError(f"{iter_dir}: corrupt torch_dist metadata ({describe_read_error(err)})") from None
        _check_file_sizes(iter_dir)
        shapes, dtypes, slots = {}, {}, {}
        for key, t in tensors.items():
            shape = tuple(t.global_shape)
            if m := _STACKED_KEY.match(key):
                for i in range(shape[0]):
                    name = f"{m['block']}.{i}.{m['rest']}"
                    shapes[name], dtypes[name], slots[name] = shape[1:], t.dtype, Slot(key, i, shape[0])
            else:
                shapes[key], dtypes[key], slots[key] = shape, t.dtype, Slot(key)
        return cls(root, iter_dir, meta, shapes, dtypes, slots)

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Read whole tensors ``names`` (per-layer names; only those: the rest stays on disk)."""
        from megatron.core import dist_checkpointing

        request = {n: self.slots[n].request(self.shapes[n], self.dtypes[n]) for n in names}
        try:
            loaded = dist_checkpointing.load(request, str(self.iter_dir), validate_access_integrity=False)
        except READ_ERRORS as err:  # a truncated or missing .distcp file surfaces from torch's reader
            raise CheckpointError(f"{self.iter_dir}: cannot read tensors, a file is truncated or corrupt "
                                  f"({describe_read_error(err)})") from None
        return {n: loaded[n][0] if self.slots[n].layer is not None else loaded[n] for n in names}


def _check_file_sizes(iter_dir: Path) -> None:
    """Every data file the torch_dist metadata points into is there and long enough (a file cut off by a
    full disk or a killed copy is named now, not when its tensors are read)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        storage = FileSystemReader(str(iter_dir)).read_metadata().storage_data or {}
    except READ_ERRORS as err:
        raise CheckpointError(f"{iter_dir}: corrupt torch_dist metadata ({describe_read_error(err)})") from None
    needed: dict[str, int] = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        path = iter_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (the checkpoint's metadata lists it)")
        if path.stat().st_size < size:
            raise CheckpointError(f"{path}: {path.stat().st_size:,} bytes, its metadata needs {size:,} (truncated)")


def load_into_model(model: torch.nn.Module | list[torch.nn.Module], ckpt: MegatronCheckpoint | str | Path,
                    iteration: int | str | None = None) -> None:
    """Load a converted (or training) checkpoint into a Megatron model at any TP/PP; call on every rank.

    ``model``: one module, or this rank's model chunks (virtual pipeline stages), loaded in one call
    (megatron-core checks that every stored slice is read exactly once over all of them).
    ``dist_checkpointing.load(model.sharded_state_dict(), iter_dir)`` (each rank reads its slices;
    the vocabulary rows are matched with ``allow_shape_mismatch``), then ``load_state_dict``. The
    model's ``_extra_state`` objects that the checkpoint lacks (Transformer Engine layers, whose
    extra state holds FP8 metadata, not weights) keep the model's values; a weight the checkpoint
    lacks is an error naming it.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import serialization
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    if not isinstance(ckpt, MegatronCheckpoint):
        ckpt = MegatronCheckpoint.open(ckpt, iteration)
    models = model if isinstance(model, list) else [model]
    stored = {slot.key for slot in ckpt.slots.values()}
    objects = set(serialization.load_sharded_metadata(str(ckpt.iter_dir)))
    sharded = {}
    for i, m in enumerate(models):
        sharded[f"model{i}"] = {k: v for k, v in m.sharded_state_dict().items()
                                if not (isinstance(v, ShardedObject) and k.endswith("_extra_state")
                                        and v.unique_key not in objects)}
    needed = {v.key for part in sharded.values() for k, v in part.items() if not k.endswith("_extra_state")}
    missing = sorted(needed - stored)
    if missing:
        raise CheckpointError(f"{ckpt.iter_dir}: the model needs tensor(s) the checkpoint lacks: "
                              f"{', '.join(missing[:10])}")
    try:
        loaded = dist_checkpointing.load(sharded, str(ckpt.iter_dir))
    except READ_ERRORS as err:
        raise CheckpointError(f"{ckpt.iter_dir}: cannot load into the model ({describe_read_error(err)})") from None
    for i, m in enumerate(models):
        # a training checkpoint's common state (optimizer groups, scheduler, counters) comes back too
        result = m.load_state_dict({k: v for k, v in loaded[f"model{i}"].items() if k in sharded[f"model{i}"]},
                                   strict=False)
        absent = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if absent or result.unexpected_keys:
            raise CheckpointError(f"{ckpt.iter_dir}: loading left parameters unset {absent[:10]} "
                                  f"or unexpected {result.unexpected_keys[:10]}")
