"""Worker for test_model_gpu.py (two GPUs): CP=2 over padded packed samples, te attention vs torch attention.

Both models hold the same bf16 weights (through a dist checkpoint) and see the same stream: two
samples with three images, each padded to a multiple of 8. Each rank computes its part of the
per-token loss (the per-sample zig-zag split both backends share) and the gradients, summed over
the CP group. For each of Transformer Engine's CP communications the te model's loss and gradients
are compared with the torch backend's (relative error: ``max|x - ref| / max|ref|``). Each rank writes
``rank{R}.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/

from helpers.vlm_inputs import packed_samples, randomize_weights_  # noqa: E402

from megatron_vlm import runtime  # noqa: E402
from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf  # noqa: E402
from megatron_vlm.models.qwen25vl.model import Qwen25VLModel  # noqa: E402
from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config  # noqa: E402
from megatron_vlm.parallel import ParallelLayout  # noqa: E402


def build(attention: str, comm: str | None) -> Qwen25VLModel:
    layout = ParallelLayout(cp=2, cp_comm_type=comm)
    runtime.initialize_distributed(layout, seed=1)
    cfg = qwen25vl_config_from_hf(tiny_qwen25vl_config().to_dict(), layout=layout, attention_backend=attention,
                                  params_dtype=torch.bfloat16)
    return Qwen25VLModel(cfg).cuda()


def loss_and_grads(model: Qwen25VLModel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    inputs = packed_samples(torch.device("cuda"), pad_to=8)
    ids = inputs["input_ids"]
    labels = torch.roll(ids, -1, 1)
    mask = torch.zeros_like(ids, dtype=torch.float)
    for start, n in zip(inputs["cu_seqlens_padded"][:-1].tolist(), inputs["cu_seqlens"].diff().tolist()):
        mask[:, start:start + n - 1] = 1  # real tokens that have a next token
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    loss = model(**inputs, labels=labels, loss_mask=mask)
    loss.float().sum().backward()
    grads = {}
    for name, p in model.named_parameters():
        grads[name] = (p.grad if p.grad is not None else torch.zeros_like(p)).float()
        torch.distributed.all_reduce(grads[name], group=ps.get_context_parallel_group())
    return loss.detach().float(), grads


def relative(x: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max()
    return ((x - ref).abs().max() / scale if scale > 0 else (x - ref).abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    reference = build("torch", None)
    randomize_weights_(reference, seed=3)
    if torch.distributed.get_rank() == 0:
        (args.out / "weights").mkdir(parents=True)
    torch.distributed.barrier()
    dist_checkpointing.save(reference.sharded_state_dict(), str(args.out / "weights"))
    ref_loss, ref_grads = loss_and_grads(reference)
    results = {}
    for comm in ("p2p", "a2a", "all_gather"):
        try:
            model = build("te", comm)
            model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(args.out / "weights")))
            loss, grads = loss_and_grads(model)
            results[comm] = {"loss": relative(loss, ref_loss),
                             "grads": max(relative(g, ref_grads[n]) for n, g in grads.items())}
        except Exception:
            results[comm] = {"error": traceback.format_exc()}
    (args.out / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(results, indent=1))
    runtime.destroy()


if __name__ == "__main__":
    main()
