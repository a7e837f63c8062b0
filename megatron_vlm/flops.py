"""Model FLOPs of a VLM (any family) for one training step: the number ``longvlm tune`` plans with and MFU uses.

Counted as matrix-multiply FLOPs (2 per multiply-add; bias adds, norms, activations and softmax are
not counted, as in Megatron's and PaLM's MFU). What is specific to this model and its data:

- attention is counted at each packed sample's **real** length (causal: ``L (L + 1) / 2`` query-key
  pairs per sample), not at the row length: a 128K row of four 32K samples costs a quarter of the
  attention of one 128K sample;
- the vision tower is counted per image: window layers (Qwen2.5-VL) attend within their windows
  (``window_size`` pixels square, ragged at the right and bottom edges), full-attention layers
  within each frame; plus the patch embedding and the 2x2 patch merger(s) (Qwen3-VL's DeepStack
  mergers too);
- the output layer runs only on the answer tokens (``loss_mask``; ``docs/model.md``), so the logits
  cost ``2 * hidden * vocab`` per answer token, not per token.

Backward is twice the forward (input and weight gradients) except for the patch embedding, whose
input (the pixels) needs no gradient. Activation recomputation is not model work and not counted.
Shapes come from the family's arch (:class:`~megatron_vlm.models.hf_config.VLArch`): the language MLP is
SwiGLU, the vision MLP has ``arch.vision_mlp_matrices`` matrices (3: SwiGLU, 2: plain).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

from megatron_vlm.models.hf_config import VLArch


@dataclass(frozen=True)
class FlopParts:
    """FLOPs of one pass, by part of the model."""

    language_linear: float = 0.0     # QKV, output projection and MLP of every language layer
    language_attention: float = 0.0  # QK^T and attention x V within each packed sample (causal)
    output_layer: float = 0.0        # hidden -> vocabulary logits of the answer tokens
    vision_linear: float = 0.0       # patch embedding, QKV, projection, MLP, patch merger
    vision_attention: float = 0.0    # within windows / whole frames (not causal)

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def __add__(self, other: FlopParts) -> FlopParts:
        return FlopParts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scale(self, factor: float) -> FlopParts:
        return FlopParts(*(getattr(self, f.name) * factor for f in fields(self)))


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of a forward and a backward pass over one batch. ``total`` is what MFU divides."""

    forward: FlopParts
    backward: FlopParts

    @property
    def total(self) -> float:
        return self.forward.total + self.backward.total

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(self.forward + other.forward, self.backward + other.backward)


def causal_pairs(lengths: Iterable[int]) -> int:
    """Query-key pairs that causal attention computes within segments of these lengths."""
    return sum(n * (n + 1) // 2 for n in lengths)


def window_pairs(grid: Sequence[int], *, merge: int, units_per_window: int) -> int:
    """Patch pairs that vision window attention computes in one image of grid ``(t, h, w)`` patches.

    Windows are ``units_per_window`` merge units square from each frame's top-left corner, ragged at
    the right and bottom edges; a window of ``r x c`` units holds ``r * c * merge^2`` patches, and
    summing ``(r c merge^2)^2`` over the grid of windows factorizes into rows times columns.
    """
    t, h, w = (int(x) for x in grid)

    def sides(units: int) -> list[int]:
        full, rest = divmod(units, units_per_window)
        return [units_per_window] * full + ([rest] if rest else [])

    rows, cols = sides(h // merge), sides(w // merge)
    return t * merge ** 4 * sum(r * r for r in rows) * sum(c * c for c in cols)


def _linear_flops_per_token(hidden: int, q_size: int, kv_size: int, ffn: int, mlp_matrices: int = 3) -> int:
    """QKV, output projection and the MLP (SwiGLU: gate, up, down; plain: fc1, fc2) of one layer, per token."""
    return 2 * hidden * (q_size + 2 * kv_size) + 2 * q_size * hidden + mlp_matrices * 2 * hidden * ffn


def patch_dim(arch: VLArch) -> int:
    """Values per patch: channels x frames x patch x patch (1,176)."""
    return arch.in_channels * arch.temporal_patch_size * arch.patch_size ** 2


def language_flops(arch: VLArch, segments: Sequence[int], answer_tokens: int | None = None) -> FlopParts:
    """Forward FLOPs of the language model over packed samples of lengths ``segments``."""
    tokens = sum(segments)
    q_size, kv_size = arch.num_heads * arch.head_dim, arch.num_query_groups * arch.head_dim
    per_token = _linear_flops_per_token(arch.hidden_size, q_size, kv_size, arch.ffn_hidden_size)
    logit_tokens = tokens if answer_tokens is None else answer_tokens
    return FlopParts(
        language_linear=float(arch.num_layers * tokens * per_token),
        language_attention=float(arch.num_layers * 4 * q_size * causal_pairs(segments)),
        output_layer=float(2 * arch.hidden_size * arch.vocab_size * logit_tokens),
    )


def vision_flops(arch: VLArch, image_grids: Iterable[Sequence[int]]) -> FlopParts:
    """Forward FLOPs of the vision tower (patch embedding, layers, merger) over images ``(t, h, w)``."""
    grids = [tuple(int(x) for x in g) for g in image_grids]
    if not grids:
        return FlopParts()
    merge, hidden = arch.spatial_merge_size, arch.vision_hidden_size
    patches = sum(t * h * w for t, h, w in grids)
    per_patch = _linear_flops_per_token(hidden, hidden, hidden, arch.vision_ffn_hidden_size, arch.vision_mlp_matrices)
    width = hidden * merge ** 2
    merger = (1 + arch.deepstack_layers) * (2 * width * width + 2 * width * arch.out_hidden_size)
    full_layers = len(set(arch.fullatt_block_indexes) & set(range(arch.vision_layers)))
    units = arch.window_size // merge // arch.patch_size
    full_pairs = sum(t * (h * w) ** 2 for t, h, w in grids)
    windowed_pairs = sum(window_pairs(g, merge=merge, units_per_window=units) for g in grids)
    pairs = full_layers * full_pairs + (arch.vision_layers - full_layers) * windowed_pairs
    return FlopParts(
        vision_linear=float(patches * (2 * patch_dim(arch) * hidden + arch.vision_layers * per_patch)
                            + patches // merge ** 2 * merger),
        vision_attention=float(4 * hidden * pairs),
    )


def model_flops(arch: VLArch, segments: Sequence[int], image_grids: Iterable[Sequence[int]] = (),
                answer_tokens: int | None = None) -> FlopCount:
    """FLOPs of one forward and backward pass of the model over a batch.

    ``segments``: the packed samples' lengths in tokens, all rows of the batch together (their sum
    is the batch's token count); ``image_grids``: ``(t, h, w)`` in patches of every image of the
    batch (``image_grid_thw``); ``answer_tokens``: the tokens with ``loss_mask`` set (``None``: the
    output layer runs on every token, as without a loss mask).
    """
    if any(n < 0 for n in segments):
        raise ValueError(f"segment lengths must be >= 0, got {list(segments)}")
    grids = [tuple(int(x) for x in g) for g in image_grids]
    forward = language_flops(arch, segments, answer_tokens) + vision_flops(arch, grids)
    patches = sum(t * h * w for t, h, w in grids)
    patch_embed = 2 * patch_dim(arch) * arch.vision_hidden_size * patches
    backward = forward.scale(2.0)
    return FlopCount(forward, replace(backward, vision_linear=backward.vision_linear - patch_embed))


__all__ = ["FlopCount", "FlopParts", "causal_pairs", "language_flops", "model_flops", "patch_dim", "vision_flops",
           "window_pairs"]
