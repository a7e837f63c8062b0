"""Test inputs for the model tests (both families): well-scaled random weights, interleaved text/image rows."""

from __future__ import annotations

import math

import torch

VOCAB = 151936
VISION_START, IMAGE_PAD, VISION_END = 151652, 151655, 151653


def randomize_weights_(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights with O(1) activations so that every module visibly moves the logits.

    transformers' init (std 0.02) leaves a tiny model almost input-independent; a 1e-4 parity
    bound would then hide real bugs. Matrices get std ``1/sqrt(fan_in)``, norm weights ``1 + U(-.5, .5)``,
    biases ``N(0, 0.2)``.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = math.prod(p.shape[1:])
                std = 1.0 if "embed" in name else 1.0 / math.sqrt(fan_in)
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name or "ln_q" in name:
                p.copy_(1.0 + torch.rand(p.shape, generator=g) - 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def make_row(parts, *, seed: int = 0, text_vocab: int = 1000, patch_dim: int = 1176):
    """``parts``: ints (that many random text tokens) and ``(t, h, w)`` image grids (in patches).

    Returns ``input_ids [s]``, ``image_grid_thw [n, 3]``, ``pixel_values [sum(t*h*w), patch_dim]``
    (1176: Qwen2.5-VL's 14 px patches; 1536: Qwen3-VL's 16 px).
    """
    g = torch.Generator().manual_seed(seed)
    ids, grids = [], []
    for p in parts:
        if isinstance(p, int):
            ids += torch.randint(0, text_vocab, (p,), generator=g).tolist()
        else:
            t, h, w = p
            grids.append(list(p))
            ids += [VISION_START] + [IMAGE_PAD] * (t * h * w // 4) + [VISION_END]
    grids_t = torch.tensor(grids, dtype=torch.long).reshape(-1, 3)
    pixels = torch.randn(int(grids_t.prod(1).sum()), patch_dim, generator=g)
    return torch.tensor(ids), grids_t, pixels


def packed_samples(device, pad_to: int = 1) -> dict:
    """Two packed samples with three images; each sample padded at its end to a multiple of ``pad_to``
    (``cu_seqlens`` real, ``cu_seqlens_padded`` in the stream, as the loader gives them)."""
    a = make_row([5, (1, 16, 12), 7, (1, 8, 28), 9], seed=1)
    b = make_row([4, (1, 10, 14), 20], seed=2)
    pieces, starts = [], [0]
    for ids in (a[0], b[0]):
        padded = -(-len(ids) // pad_to) * pad_to
        pieces.append(torch.cat([ids, torch.full((padded - len(ids),), 151643)]))
        starts.append(starts[-1] + padded)
    ids = torch.cat(pieces)[None].to(device)
    return dict(input_ids=ids, pixel_values=torch.cat([a[2], b[2]]).to(device), image_grid_thw=torch.cat([a[1], b[1]]),
                cu_seqlens=torch.tensor([0, len(a[0]), len(a[0]) + len(b[0])]), cu_seqlens_padded=torch.tensor(starts))


def hf_logits(hf_model, input_ids, image_grid_thw=None, pixel_values=None, position_ids=None):
    """Reference logits ``[b, s, vocab]`` from transformers (``mm_token_type_ids`` set so mRoPE is used)."""
    kwargs = {}
    if image_grid_thw is not None and len(image_grid_thw):
        kwargs = dict(pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                      mm_token_type_ids=(input_ids == IMAGE_PAD).int())
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    with torch.no_grad():
        return hf_model(input_ids=input_ids, **kwargs).logits
