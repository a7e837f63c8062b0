"""Hugging Face checkpoints of any registered family on disk: validated lazy reading and sharded writing.

Reading follows ``model.safetensors.index.json`` (or a single ``model.safetensors``) and opens
each shard with ``safe_open``, so tensors are read one at a time and only when asked for. Writing
produces what ``save_pretrained`` produces: ``model-0000k-of-0000n.safetensors`` shards, the index
with the on-disk names, ``config.json`` and ``generation_config.json``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from megatron_vlm.errors import ConfigError
from megatron_vlm.formats.checkpoint import CheckpointError
from megatron_vlm.models.hf_config import VLArch
from megatron_vlm.models.registry import read_arch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Files of an HF model directory that are weights or that the exporter writes itself.
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf")
_NOT_COPIED_NAMES = {"config.json", INDEX_NAME, "pytorch_model.bin.index.json"}


def expected_hf_shapes(arch: VLArch) -> dict[str, tuple[int, ...]]:
    """On-disk name -> shape of every parameter ``transformers`` builds for ``arch`` (meta device)."""
    family = arch.family
    model_class = family.hf_model_class()
    with torch.device("meta"):
        model = model_class(model_class.config_class.from_dict(arch.raw))
    return {family.hf_disk_name(name): tuple(tensor.shape) for name, tensor in model.state_dict().items()}


@dataclass
class HFCheckpoint:
    """A validated HF checkpoint directory; tensors are read lazily through :meth:`reader`."""

    path: Path
    arch: VLArch
    weight_map: dict[str, str]  # on-disk tensor name -> shard file name
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # "bfloat16", ...

    @classmethod
    def open(cls, path: str | Path) -> HFCheckpoint:
        """Check the directory (config, architecture, index, every shard's header) or raise
        :class:`CheckpointError` naming what is wrong."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{path}: not a Hugging Face checkpoint (no config.json)")
        try:
            raw = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{config_file}: corrupt JSON ({err})") from None
        try:
            arch = read_arch(raw, name=str(config_file))
        except ConfigError as err:
            raise CheckpointError(str(err)) from None
        index_file = path / INDEX_NAME
        if index_file.is_file():
            try:
                weight_map = json.loads(index_file.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index_file}: corrupt index ({err!r})") from None
        elif (path / SINGLE_NAME).is_file():
            weight_map = None
        else:
            raise CheckpointError(f"{path}: no {INDEX_NAME} and no {SINGLE_NAME}")
        shards = sorted(set(weight_map.values())) if weight_map else [SINGLE_NAME]
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"{path}: missing shard file(s) listed in {INDEX_NAME}: {', '.join(missing)}")
        shapes, dtypes, found = {}, {}, {}
        for shard in shards:
            try:
                with safe_open(path / shard, framework="pt") as f:
                    for name in f.keys():
                        sl = f.get_slice(name)
                        shapes[name], dtypes[name] = tuple(sl.get_shape()), _TORCH_DTYPE_NAMES.get(
                            sl.get_dtype(), sl.get_dtype())
                        found[name] = shard
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"{path / shard}: corrupt safetensors file ({err})") from None
        if weight_map is None:
            weight_map = found
        absent = sorted(n for n, s in weight_map.items() if found.get(n) != s)
        if absent:
            raise CheckpointError(f"{path}: tensor(s) listed in {INDEX_NAME} are not in their shard: "
                                  f"{', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}")
        ckpt = cls(path, arch, dict(weight_map), shapes, dtypes)
        ckpt._check_shapes()
        return ckpt

    def _check_shapes(self) -> None:
        expected = expected_hf_shapes(self.arch)
        wrong = [f"{n} is {self.shapes[n]}, config implies {expected[n]}"
                 for n in self.weight_map if n in expected and self.shapes[n] != expected[n]]
        if wrong:
            raise CheckpointError(f"{self.path}: tensor shapes do not match config.json (wrong architecture "
                                  f"or corrupt file): {'; '.join(wrong[:5])}")

    def read(self, name: str) -> torch.Tensor:
        """One tensor, through its own short-lived ``safe_open``: the tensor stays memory-mapped
        while it lives, and the pages of tensors that are dropped (the parts of a fused tensor)
        leave this process with their mapping instead of staying resident with the shard's."""
        from safetensors import safe_open

        with safe_open(self.path / self.weight_map[name], framework="pt") as f:
            return f.get_tensor(name)


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> bytes (decimal units as in ``transformers``' ``max_shard_size``)."""
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "": 1}
    s = str(text).strip().upper()
    unit = next(u for u in sorted(units, key=len, reverse=True) if s.endswith(u))
    try:
        size = float(s[: len(s) - len(unit)])
    except ValueError:
        size = math.nan
    if not (math.isfinite(size) and size * units[unit] >= 1):
        raise ConfigError(f"--max-shard-size must be a size such as 5GB, 500MB or 2GiB, got {text!r}")
    return int(size * units[unit])


_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


_TORCH_DTYPE_NAMES = {code: str(dtype).removeprefix("torch.") for dtype, code in _SAFETENSORS_DTYPES.items()}


class ShardedSafetensorsWriter:
    """Streams tensors into ``model-0000k-of-0000n.safetensors`` shards plus the index.

    The shards are planned up front from ``(name, shape, dtype)`` (greedy, at most
    ``max_shard_size`` bytes, a larger tensor alone), so each shard's header is written first and
    every tensor's bytes go straight from its memory to the file: nothing is buffered. Tensors must
    be added in plan order.
    """

    def __init__(self, out_dir: Path, plan: list[tuple[str, tuple[int, ...], torch.dtype]], max_shard_size: int):
        self.out_dir = Path(out_dir)
        self.shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = []
        size = 0
        for name, shape, dtype in plan:
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            if not self.shards or (size + nbytes > max_shard_size and self.shards[-1]):
                self.shards.append([])
                size = 0
            self.shards[-1].append((name, tuple(shape), dtype))
            size += nbytes
        self.total_size = sum(torch.Size(s).numel() * d.itemsize for _, s, d in plan)
        n = len(self.shards)
        self.files = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" if n > 1 else SINGLE_NAME for k in range(n)]
        self._order = [(k, entry) for k, shard in enumerate(self.shards) for entry in shard]
        self._next = 0
        self._stream = None

    def _open(self, k: int) -> None:
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype in self.shards[k]:
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._stream = open(self.out_dir / self.files[k], "wb")
        self._stream.write(len(blob).to_bytes(8, "little") + blob)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        k, (expected, shape, dtype) = self._order[self._next]
        if name != expected or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"writer expected {expected} {shape} {dtype}, got {name} "
                             f"{tuple(tensor.shape)} {tensor.dtype}")
        if self._next == 0 or self._order[self._next - 1][0] != k:
            if self._stream is not None:
                self._stream.close()
            self._open(k)
        self._stream.write(memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def finish(self) -> dict[str, str]:
        """Close the last shard and write the index; return the weight map."""
        self.close()
        if self._next != len(self._order):
            raise ValueError(f"writer got {self._next} of {len(self._order)} planned tensors")
        weight_map = {name: self.files[k] for k, (name, _, _) in self._order}
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return weight_map


def default_generation_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A minimal ``generation_config.json`` from the token ids in ``config.json``."""
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else {}
    gen = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = raw.get(key, text.get(key))
        if value is not None:
            gen[key] = value
    return gen


def copy_side_files(template: Path, out_dir: Path) -> list[str]:
    """Copy tokenizer, processor, chat template, generation config, README/LICENSE: every top-level
    file of ``template`` except weights, indexes and ``config.json``. Returns the copied names."""
    copied = []
    for f in sorted(Path(template).iterdir()):
        if f.is_file() and f.name not in _NOT_COPIED_NAMES and not f.name.endswith(_NOT_COPIED_SUFFIXES) \
                and not f.name.startswith("."):
            shutil.copy2(f, out_dir / f.name)
            copied.append(f.name)
    return copied
