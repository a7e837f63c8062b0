"""The one conversion engine: applies the family's mapping table (``megatron_vlm.models.mapping``) in either
direction, streaming tensor by tensor, writing atomically.

- ``hf_to_megatron``: HF safetensors -> torch_dist checkpoint (global tensors + ``longvlm.json``).
- ``megatron_to_hf``: torch_dist checkpoint -> HF safetensors shards + index + configs + tokenizer.
- ``reshard``: torch_dist -> torch_dist validated and vocabulary-padded for another TP/PP.

Memory: the HF side is read (and written) one tensor / one shard at a time; a torch_dist save
needs the tensors of the checkpoint it writes in memory (about 1x the model's bytes).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from checkpoint_tools.config import HFToMegatronConfig, MegatronTarget, MegatronToHFConfig, ReshardConfig
from checkpoint_tools.hf_io import (
    HFCheckpoint,
    ShardedSafetensorsWriter,
    copy_side_files,
    default_generation_config,
    expected_hf_shapes,
    parse_size,
)
from megatron_vlm.errors import ConfigError
from megatron_vlm.formats.checkpoint import (
    META_NAME,
    CheckpointError,
    MegatronCheckpoint,
    checkpoint_meta,
    iteration_dir_name,
    save_global_tensors,
    write_tracker,
)
from megatron_vlm.models.hf_config import VLArch, rewrite_hf_config
from megatron_vlm.models.mapping import (
    MODEL_KEY_PREFIXES,
    Dims,
    Mapping,
    MappingError,
    check_coverage,
    expand,
    layer_pattern,
    padded_vocab_size,
)
from megatron_vlm.models.registry import read_arch
from megatron_vlm.parallel import ParallelLayout
from megatron_vlm.runtime import process_group
from megatron_vlm.utils.atomic import atomic_dir
from megatron_vlm.utils.stop_points import stop_point

LOAD_BATCH_BYTES = 1 << 29  # tensors read from a torch_dist checkpoint per load call


@dataclass
class ConversionResult:
    """What a conversion wrote."""

    action: str
    out: Path
    tensors: int
    bytes: int
    seconds: float
    dtype: str
    layout: dict[str, int] = field(default_factory=dict)
    copied_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lay = ", ".join(f"{k}={v}" for k, v in self.layout.items())
        extra = ""
        if self.action == "megatron-to-hf":  # name them: a template may hold no tokenizer at all
            extra = f"; copied from the template: {', '.join(self.copied_files) or 'nothing'}"
        return (f"{self.action}: wrote {self.tensors} tensors ({self.bytes / 1e9:.2f} GB, {self.dtype}) to "
                f"{self.out} in {self.seconds:.1f} s{' [' + lay + ']' if lay else ''}{extra}")


def _dtype(name: str | None) -> torch.dtype | None:
    return getattr(torch, name) if name else None


def _dtype_name(dtypes: set[torch.dtype] | set[str]) -> str:
    names = sorted(str(d).replace("torch.", "") for d in dtypes)
    return names[0] if len(names) == 1 else "mixed(" + ",".join(names) + ")"


def check_layout(mappings: list[Mapping], shapes: dict[str, tuple], dims: Dims, layout: ParallelLayout) -> None:
    """Every TP-split tensor divides over its TP size and PP has a layer per stage, else one error listing all."""
    problems: dict[str, str] = {}
    if dims.lm_layers < layout.pp:  # uneven stages are fine (num_layers_in_first_pipeline_stage)
        problems["pp"] = f"{dims.lm_layers} language-model layers cannot fill pp={layout.pp} stages"
    for m in mappings:
        if m.tp_dim is None:
            continue
        units = m.transform.tp_units(shapes[m.megatron], m.tp_dim, dims)
        if units % layout.tp:
            problems.setdefault(layer_pattern(m.megatron),
                                f"{layer_pattern(m.megatron)}: {units} units along dim {m.tp_dim} "
                                f"do not divide over tp={layout.tp}")
    if problems:
        raise CheckpointError("layout not possible for this model: " + "; ".join(problems.values()))


def _batches(mappings: list[Mapping], shapes: dict[str, tuple], dtypes: dict[str, torch.dtype]) -> Iterator[list[Mapping]]:
    batch, size = [], 0
    for m in mappings:
        nbytes = torch.Size(shapes[m.megatron]).numel() * dtypes[m.megatron].itemsize
        if batch and size + nbytes > LOAD_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(m)
        size += nbytes
    if batch:
        yield batch


def _write_megatron(out: Path, iteration: int | str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    iter_dir = out / iteration_dir_name(iteration)
    save_global_tensors(tensors, iter_dir)
    (iter_dir / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    write_tracker(out, iteration)
    stop_point("convert.publish")  # (test hook: everything written, the staging folder not yet renamed)


def _target_dims(arch: VLArch, vocab_size: int, mappings: list[Mapping], target: MegatronTarget,
                 hf_side: Callable[[Mapping], list[torch.Tensor]]) -> Dims:
    """The dims of the Megatron checkpoint to write for ``target`` (its vocabulary padded for the layout), every
    tensor's shape computed on meta tensors from its ``hf_side`` and checked against the layout (reads nothing)."""
    dims = Dims.from_arch(arch, padded_vocab_size(vocab_size, target.layout.tp, target.make_vocab_size_divisible_by))
    shapes = {}
    for m in mappings:
        try:
            shapes[m.megatron] = tuple(m.transform.to_megatron(hf_side(m), dims).shape)
        except MappingError as err:
            raise MappingError(f"{m.megatron} (from {', '.join(m.hf)}): {err}") from None
    check_layout(mappings, shapes, dims, target.layout)
    return dims


def _write_target(action: str, cfg: HFToMegatronConfig | ReshardConfig, iteration: int | str,
                  tensors: Iterator[tuple[str, torch.Tensor]], hf_config: dict, source: dict, dims: Dims,
                  started: float) -> ConversionResult:
    """Collect the converted ``tensors`` (cast to ``--dtype``) and write them as a Megatron checkpoint at ``--out``
    (atomically, with its ``longvlm.json``); the tensors are made inside the process group the save needs."""
    cast = _dtype(cfg.dtype)
    out, layout = Path(cfg.out), cfg.target.layout
    written: dict[str, torch.Tensor] = {}
    with atomic_dir(out) as tmp, process_group():
        for name, t in tensors:
            written[name] = t.to(cast) if cast is not None else t
        dtype = _dtype_name({t.dtype for t in written.values()})
        nbytes = sum(t.numel() * t.element_size() for t in written.values())
        meta = checkpoint_meta(hf_config, dtype=dtype, layout=layout, vocab_size=dims.vocab_size,
                               padded_vocab_size=dims.padded_vocab_size, source=source,
                               make_vocab_size_divisible_by=cfg.target.make_vocab_size_divisible_by)
        _write_megatron(tmp, iteration, written, meta)
        n = len(written)
        written.clear()
    return ConversionResult(action, out, n, nbytes, time.perf_counter() - started, dtype,
                            {"tp": layout.tp, "pp": layout.pp})


def hf_to_megatron(cfg: HFToMegatronConfig) -> ConversionResult:
    """Convert an HF checkpoint (any registered family) into a torch_dist checkpoint at ``cfg.out``."""
    started = time.perf_counter()
    cfg.check()
    src = HFCheckpoint.open(cfg.hf)
    mappings = expand(Dims.from_arch(src.arch, None), src.arch.family.mapping_parts)
    check_coverage(mappings, set(src.weight_map), "hf")
    dims = _target_dims(src.arch, src.arch.vocab_size, mappings, cfg.target,
                        lambda m: [torch.empty(src.shapes[n], device="meta") for n in m.hf])

    def converted() -> Iterator[tuple[str, torch.Tensor]]:
        for m in tqdm(mappings, desc="hf -> megatron", unit="tensor", leave=False):
            yield m.megatron, m.transform.to_megatron([src.read(n) for n in m.hf], dims)

    source = {"hf_dir": str(Path(cfg.hf).resolve()), "dtype": _dtype_name(set(src.dtypes.values()))}
    return _write_target("hf-to-megatron", cfg, 0, converted(), src.arch.raw, source, dims, started)


def _open_megatron(ckpt: str, iteration: str | None) -> tuple[MegatronCheckpoint, VLArch, Dims, list[Mapping]]:
    """A Megatron checkpoint as a source: its family's arch, its dims (the stored vocabulary padding) and mappings,
    every stored model tensor covered."""
    src = MegatronCheckpoint.open(ckpt, iteration)
    try:
        arch = read_arch(src.meta["hf_config"], name=str(src.iter_dir / META_NAME))
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    emb = "language_model.embedding.word_embeddings.weight"
    padded = src.shapes[emb][0] if emb in src.shapes else None
    dims = Dims.from_arch(arch, padded)
    mappings = expand(dims, arch.family.mapping_parts)
    check_coverage(mappings, {k for k in src.shapes if k.startswith(MODEL_KEY_PREFIXES)}, "megatron")
    return src, arch, dims, mappings


def megatron_to_hf(cfg: MegatronToHFConfig) -> ConversionResult:
    """Export a torch_dist checkpoint as an HF directory of its family at ``cfg.out``."""
    start = time.perf_counter()
    cfg.check()
    src, arch, dims, mappings = _open_megatron(cfg.ckpt, cfg.iteration)
    expected = expected_hf_shapes(arch)
    template = Path(cfg.hf_template) if cfg.hf_template else None
    if template is None and Path(src.meta.get("source", {}).get("hf_dir", "")).is_dir():
        template = Path(src.meta["source"]["hf_dir"])
    if template is not None and not template.is_dir():
        raise CheckpointError(f"--hf-template {template}: not a directory")
    rope_scaling = cfg.rope_scaling_dict()
    cast = _dtype(cfg.dtype)
    plan = []  # (HF name, shape, dtype) of every output tensor, from the transforms on meta tensors
    for m in mappings:
        meta = torch.empty(src.shapes[m.megatron], dtype=src.dtypes[m.megatron], device="meta")
        for name, t in zip(m.hf, m.transform.to_hf(meta, dims)):
            if name in expected and tuple(t.shape) != expected[name]:
                raise MappingError(f"{name}: the checkpoint gives shape {tuple(t.shape)}, "
                                   f"the recorded config implies {expected[name]}")
            plan.append((name, tuple(t.shape), cast or t.dtype))
    dtype = _dtype_name({d for _, _, d in plan})
    out = Path(cfg.out)
    with atomic_dir(out) as tmp, process_group():
        writer = ShardedSafetensorsWriter(tmp, plan, parse_size(cfg.max_shard_size))
        try:
            with tqdm(total=len(mappings), desc="megatron -> hf", unit="tensor", leave=False) as progress:
                for batch in _batches(mappings, src.shapes, src.dtypes):
                    loaded = src.load([m.megatron for m in batch])
                    for m in batch:
                        for name, t in zip(m.hf, m.transform.to_hf(loaded.pop(m.megatron), dims)):
                            writer.add(name, t.to(cast) if cast is not None else t)
                        progress.update()
            writer.finish()
        finally:
            writer.close()
        uniform = len({d for _, _, d in plan}) == 1
        hf_config = rewrite_hf_config(src.meta["hf_config"], rope_theta=cfg.rope_theta,
                                        rope_scaling=rope_scaling,
                                        max_position_embeddings=cfg.max_position_embeddings,
                                        dtype=dtype if uniform else None)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        copied = copy_side_files(template, tmp) if template is not None else []
        if not (tmp / "generation_config.json").exists():
            (tmp / "generation_config.json").write_text(
                json.dumps(default_generation_config(hf_config), indent=2) + "\n")
        stop_point("convert.publish")
    if template is None:
        print(f"warning: no --hf-template and the source recorded in {META_NAME} is gone: "
              "tokenizer and processor files were not copied", file=sys.stderr)
    return ConversionResult("megatron-to-hf", out, len(plan), writer.total_size,
                            time.perf_counter() - start, dtype, {}, copied)


def reshard(cfg: ReshardConfig) -> ConversionResult:
    """Re-save a torch_dist checkpoint validated and vocabulary-padded for another TP/PP layout."""
    started = time.perf_counter()
    cfg.check()
    src, arch, src_dims, mappings = _open_megatron(cfg.ckpt, cfg.iteration)
    dims = _target_dims(arch, src_dims.vocab_size, mappings, cfg.target, lambda m: m.transform.to_hf(
        torch.empty(src.shapes[m.megatron], device="meta"), src_dims))
    iteration = src.iter_dir.name.removeprefix("iter_")
    iteration = "release" if iteration == "release" else int(iteration)

    def converted() -> Iterator[tuple[str, torch.Tensor]]:
        with tqdm(total=len(mappings), desc="reshard", unit="tensor", leave=False) as progress:
            for batch in _batches(mappings, src.shapes, src.dtypes):
                loaded = src.load([m.megatron for m in batch])
                for m in batch:
                    yield m.megatron, m.transform.to_megatron(m.transform.to_hf(loaded.pop(m.megatron), src_dims), dims)
                    progress.update()

    return _write_target("reshard", cfg, iteration, converted(), src.meta["hf_config"], src.meta.get("source", {}),
                         dims, started)
