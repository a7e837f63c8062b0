"""Worker for tests/test_convert_model.py: load a converted checkpoint into ``Qwen25VLModel`` at a
TP/PP layout with a plain ``dist_checkpointing.load(model.sharded_state_dict())`` and compare with
transformers' logits (TP: gathered logits; PP: per-token loss through the pipeline schedule);
then save the model as a training run would (``--save``) for the export test. Writes
``rank{R}.json`` into ``--out``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_vlm import runtime
from megatron_vlm.formats.checkpoint import MegatronCheckpoint, save_model
from megatron_vlm.parallel import ParallelLayout


def main() -> None:
    from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf
    from megatron_vlm.models.qwen25vl.model import Qwen25VLModel

    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True, help="torch.save'd inputs, labels, hf logits")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--save", type=Path, required=True, help="save the loaded model here (iteration 100)")
    args = parser.parse_args()
    ref = torch.load(args.reference)
    inputs = {k: ref[k] for k in ("input_ids", "pixel_values", "image_grid_thw")}
    layout = ParallelLayout(tp=args.tp, pp=args.pp)
    runtime.initialize_distributed(layout, seed=1)
    ckpt = MegatronCheckpoint.open(args.ckpt)
    config = qwen25vl_config_from_hf(ckpt.meta["hf_config"], layout=layout)
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    model = Qwen25VLModel(config, pre_process=first, post_process=last).eval()
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(ckpt.iter_dir)))
    result = {"layers": len(model.language_model.decoder.layers)}
    if args.pp == 1:
        with torch.no_grad():
            logits = tensor_parallel.gather_from_tensor_model_parallel_region(model(**inputs))
        result["logits"] = (logits[..., : ref["logits"].shape[-1]] - ref["logits"]).abs().max().item()
    else:
        def step(_iterator, m):
            return m(**inputs, labels=ref["labels"]), lambda per_token: (per_token.sum(), {"per_token": per_token})

        with torch.no_grad():
            losses = get_forward_backward_func()(
                forward_step_func=step, data_iterator=iter([None]), model=[model], num_microbatches=1,
                seq_length=inputs["input_ids"].shape[1], micro_batch_size=1, forward_only=True)
        if last:
            expected = F.cross_entropy(ref["logits"][0], ref["labels"][0], reduction="none")
            result["loss"] = (losses[0]["per_token"][0] - expected).abs().max().item()
    save_model(model, args.save, 100, ckpt.meta["source"])
    (args.out / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(result))
    runtime.destroy()


if __name__ == "__main__":
    main()
