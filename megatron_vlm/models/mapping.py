"""The machinery of the declarative HF <-> Megatron name mappings; each family's ``mapping.py`` holds its table.

A family's table is its ``PARTS``: per model part, a tuple of rules. Each :class:`Rule` pairs one Megatron key pattern with the Hugging Face on-disk name pattern(s)
it is built from and the :class:`Transform` between them; ``{i}`` is the (global) layer index.
The tables are the single source of truth for both directions (``docs/checkpoints.md`` shows
them): the conversion engine (``checkpoint_tools.engine``) expands and applies them, and never
names a parameter itself.

Megatron tensors are stored as GLOBAL tensors (megatron-core ``dist_checkpointing`` keeps each
tensor's global shape and every rank's offsets), so a rule's ``tp_dim`` says along which dimension
tensor parallelism splits it; it is used to validate a layout, not to cut files.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch

from megatron_vlm.errors import LongVLMError
from megatron_vlm.models.hf_config import VLArch


class MappingError(LongVLMError, ValueError):
    """Tensors that no rule maps, that a rule needs but are absent, or with impossible shapes."""


@dataclass(frozen=True)
class Dims:
    """The sizes the transforms need, read from a model's config."""

    lm_layers: int
    lm_heads: int
    lm_groups: int  # key/value heads (query groups)
    lm_head_dim: int
    vocab_size: int  # the HF vocabulary size (rows of embed_tokens / lm_head)
    padded_vocab_size: int  # rows stored in the Megatron checkpoint (>= vocab_size)
    vision_layers: int
    vision_heads: int
    vision_head_dim: int
    tie_word_embeddings: bool
    deepstack_layers: int = 0  # DeepStack feature mergers (Qwen3-VL)

    @classmethod
    def from_arch(cls, arch: VLArch, padded_vocab_size: int | None = None) -> Dims:
        return cls(
            lm_layers=arch.num_layers,
            lm_heads=arch.num_heads,
            lm_groups=arch.num_query_groups,
            lm_head_dim=arch.head_dim,
            vocab_size=arch.vocab_size,
            padded_vocab_size=padded_vocab_size or arch.vocab_size,
            vision_layers=arch.vision_layers,
            vision_heads=arch.vision_heads,
            vision_head_dim=arch.vision_head_dim,
            tie_word_embeddings=arch.tie_word_embeddings,
            deepstack_layers=arch.deepstack_layers,
        )


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron's vocabulary padding: the next multiple of ``divisible_by * tp``."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


class Transform:
    """A bijection between a tuple of HF tensors and one Megatron tensor."""

    def to_megatron(self, hf: list[torch.Tensor], dims: Dims) -> torch.Tensor:
        raise NotImplementedError

    def to_hf(self, meg: torch.Tensor, dims: Dims) -> list[torch.Tensor]:
        raise NotImplementedError

    def tp_units(self, meg_shape: tuple[int, ...], tp_dim: int, dims: Dims) -> int:
        """How many indivisible blocks lie along ``tp_dim``; the TP size must divide it."""
        return meg_shape[tp_dim]


class Identity(Transform):
    def to_megatron(self, hf, dims):
        return hf[0]

    def to_hf(self, meg, dims):
        return [meg]


class GatedConcat(Transform):
    """SwiGLU ``linear_fc1`` = ``[gate; up]`` on dim 0 (megatron-core's global layout of the
    fused weight: ``apply_swiglu_sharded_factory`` stores the gate halves of all TP ranks first)."""

    def to_megatron(self, hf, dims):
        gate, up = hf
        if gate.shape != up.shape:
            raise MappingError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} differ in shape")
        return torch.cat([gate, up], dim=0)

    def to_hf(self, meg, dims):
        if meg.shape[0] % 2:
            raise MappingError(f"fused [gate; up] has an odd first dimension {meg.shape[0]}")
        return [t.clone() for t in torch.chunk(meg, 2, dim=0)]

    def tp_units(self, meg_shape, tp_dim, dims):
        return meg_shape[0] // 2  # each half is split over TP


def _fuse_groups(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int,
                 head_dim: int) -> torch.Tensor:
    """``[q_g (heads/groups x d); k_g (d); v_g (d)]`` for each query group g, concatenated."""
    rest = q.shape[1:]
    if q.shape[0] != heads * head_dim or k.shape[0] != groups * head_dim or v.shape != k.shape:
        raise MappingError(
            f"q/k/v shapes {tuple(q.shape)}/{tuple(k.shape)}/{tuple(v.shape)} do not match "
            f"{heads} heads, {groups} groups, head_dim {head_dim}")
    fused = torch.cat([q.reshape(groups, heads // groups * head_dim, *rest),
                       k.reshape(groups, head_dim, *rest),
                       v.reshape(groups, head_dim, *rest)], dim=1)
    return fused.reshape((heads + 2 * groups) * head_dim, *rest)


def _split_groups(fused: torch.Tensor, heads: int, groups: int, head_dim: int) -> list[torch.Tensor]:
    rows = (heads + 2 * groups) * head_dim
    if fused.shape[0] != rows:
        raise MappingError(f"fused qkv has {fused.shape[0]} rows, expected {rows} "
                           f"({heads} heads, {groups} groups, head_dim {head_dim})")
    rest = fused.shape[1:]
    per_group = fused.reshape(groups, (heads // groups + 2) * head_dim, *rest)
    q, k, v = torch.split(per_group, [heads // groups * head_dim, head_dim, head_dim], dim=1)
    return [t.reshape(-1, *rest).clone() for t in (q, k, v)]


class GroupedQKV(Transform):
    """Language-model attention: separate q/k/v projections <-> fused per query group (GQA)."""

    def to_megatron(self, hf, dims):
        return _fuse_groups(*hf, dims.lm_heads, dims.lm_groups, dims.lm_head_dim)

    def to_hf(self, meg, dims):
        return _split_groups(meg, dims.lm_heads, dims.lm_groups, dims.lm_head_dim)

    def tp_units(self, meg_shape, tp_dim, dims):
        return dims.lm_groups


class StackedToInterleavedQKV(Transform):
    """Vision attention: HF ``qkv`` stacks ``[Q; K; V]`` (all heads); Megatron interleaves
    ``[q_h; k_h; v_h]`` per head (multi-head attention = one query group per head)."""

    def to_megatron(self, hf, dims):
        (qkv,) = hf
        if qkv.shape[0] % 3:
            raise MappingError(f"vision qkv first dimension {qkv.shape[0]} is not a multiple of 3")
        q, k, v = torch.chunk(qkv, 3, dim=0)
        return _fuse_groups(q, k, v, dims.vision_heads, dims.vision_heads, dims.vision_head_dim)

    def to_hf(self, meg, dims):
        return [torch.cat(_split_groups(meg, dims.vision_heads, dims.vision_heads, dims.vision_head_dim))]

    def tp_units(self, meg_shape, tp_dim, dims):
        return dims.vision_heads


class PaddedVocab(Transform):
    """Vocabulary rows: zero-padded to Megatron's padded vocabulary on import, stripped on export."""

    def to_megatron(self, hf, dims):
        (w,) = hf
        if w.shape[0] != dims.vocab_size:
            raise MappingError(f"vocabulary matrix has {w.shape[0]} rows, config says {dims.vocab_size}")
        pad = dims.padded_vocab_size - w.shape[0]
        return torch.cat([w, w.new_zeros(pad, *w.shape[1:])]) if pad else w

    def to_hf(self, meg, dims):
        if meg.shape[0] < dims.vocab_size:
            raise MappingError(f"vocabulary matrix has {meg.shape[0]} rows, fewer than {dims.vocab_size}")
        return [meg[: dims.vocab_size].clone() if meg.shape[0] != dims.vocab_size else meg]


IDENTITY, GATED, LM_QKV, VISION_QKV, VOCAB = (
    Identity(), GatedConcat(), GroupedQKV(), StackedToInterleavedQKV(), PaddedVocab())


@dataclass(frozen=True)
class Rule:
    """One Megatron tensor <-> the HF tensor(s) it is made of."""

    megatron: str
    hf: tuple[str, ...]
    transform: Transform = IDENTITY
    tp_dim: int | None = None  # None: replicated over tensor parallelism
    untied_only: bool = False  # absent when tie_word_embeddings


def layer_rule(megatron_prefix: str, hf_prefix: str, meg: str, hf: str | tuple[str, ...],
               transform: Transform = IDENTITY, tp_dim: int | None = None) -> Rule:
    """A per-layer rule: ``{megatron_prefix}.{i}.{meg}`` <- ``{hf_prefix}.{i}.{h}`` for each ``h`` of ``hf``."""
    hf = (hf,) if isinstance(hf, str) else hf
    return Rule(f"{megatron_prefix}.{{i}}.{meg}", tuple(f"{hf_prefix}.{{i}}.{h}" for h in hf), transform, tp_dim)


@dataclass(frozen=True)
class Part:
    """One part of a model's table: its rules and the ``Dims`` field counting its layers (per-layer rules)."""

    name: str
    rules: tuple[Rule, ...]
    layers: str = "lm_layers"


MODEL_KEY_PREFIXES = ("language_model.", "vision_model.")


@dataclass(frozen=True)
class Mapping:
    """One concrete rule: layer index filled in."""

    megatron: str
    hf: tuple[str, ...]
    transform: Transform
    tp_dim: int | None


def expand(dims: Dims, parts: tuple[Part, ...]) -> list[Mapping]:
    """All concrete mappings of a model from its family's ``parts``, in HF checkpoint order (the parts in
    order; the per-layer rules of a part layer by layer)."""
    out: list[Mapping] = []
    for part in parts:
        rules = [r for r in part.rules if not (r.untied_only and dims.tie_word_embeddings)]
        for per_layer, run in itertools.groupby(rules, key=lambda r: "{i}" in r.megatron):
            run = list(run)
            for i in range(getattr(dims, part.layers)) if per_layer else [None]:
                out.extend(Mapping(r.megatron.format(i=i), tuple(h.format(i=i) for h in r.hf), r.transform,
                                   r.tp_dim) for r in run)
    return out


def check_coverage(mappings: list[Mapping], present: set[str], side: str) -> None:
    """Every tensor the mapping needs is present and every present tensor is used, else an error
    naming them (``side`` is "hf" or "megatron")."""
    needed = {n for m in mappings for n in (m.hf if side == "hf" else (m.megatron,))}
    missing, unused = sorted(needed - present), sorted(present - needed)
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) the model's mapping needs are missing: {_names(missing)}")
    if unused:
        problems.append(f"{len(unused)} tensor(s) are not mapped by any rule: {_names(unused)}")
    if problems:
        raise MappingError("; ".join(problems))


def _names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def layer_pattern(name: str) -> str:
    """``...layers.7.x`` -> ``...layers.{i}.x`` (for grouping names in messages and docs)."""
    return re.sub(r"\.(layers|blocks)\.\d+\.", r".\1.{i}.", name)
