"""Checkpoints for the conversion tests: a tiny random HF Qwen2.5-VL, the tensors of an HF or a Megatron
checkpoint, and bit-exact comparison of two tensor sets."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers.vlm_inputs import randomize_weights_


def random_checkpoint(path: Path, seed: int) -> Path:
    """A tiny Qwen2.5-VL (4 layers) with O(1) activations (so a mapping error moves the logits visibly),
    saved in shards of 20 MB."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen25vl_config(num_layers=4)).eval()
    randomize_weights_(model, seed=seed)
    model.save_pretrained(path, max_shard_size="20MB")
    return path


def hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the HF checkpoint in ``path`` (all its safetensors shards)."""
    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def megatron_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every global tensor of the Megatron checkpoint ``ckpt`` (its latest iteration)."""
    from megatron_vlm.formats.checkpoint import MegatronCheckpoint
    from megatron_vlm.runtime import process_group

    with process_group():
        src = MegatronCheckpoint.open(ckpt)
        return src.load(sorted(src.shapes))


def assert_bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The same names, and per name the same dtype and the same bits."""
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name
