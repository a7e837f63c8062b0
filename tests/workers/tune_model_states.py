"""Worker for tests/test_tune_memory.py: what a built Qwen25VLModel allocates per rank (4 ranks).

For each (TP, PP) in {1, 2} x {1, 2} (DP = 4 / (TP x PP)) the rank builds its stage of the model in
bf16, wraps it in Megatron DDP with the distributed optimizer's buffers (fp32 gradient reduction,
overlapped buckets of ``--bucket-size`` elements) and records: its parameter count, the bytes of
DDP's parameter and gradient buffers, and the parameter elements of its distributed-optimizer
shard (from ``DistributedOptimizer._build_gbuf_range_map``, the ranges the optimizer allocates its
fp32 master weights and Adam moments for). Then the same stage in fp32 with Megatron's
non-distributed Adam (``get_megatron_optimizer``) takes one step and the bytes of its state
tensors are recorded. Each rank writes ``rank{R}.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

from megatron_vlm import runtime
from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf
from megatron_vlm.models.qwen25vl.model import Qwen25VLModel
from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config
from megatron_vlm.parallel import ParallelLayout

# name -> (Hugging Face config, language layers on the first stage at PP 2)
MODELS = {
    "tiny": (dict(num_layers=3), 1),
    # ~105M parameters, tied embeddings (the shared-embedding bucket of the distributed optimizer)
    "100m": (dict(hidden_size=512, num_heads=8, num_kv_heads=2, mrope_section=(8, 12, 12), intermediate_size=1408,
                  num_layers=8, vision_depth=4, vision_hidden_size=256, vision_heads=4, vision_intermediate_size=640,
                  fullatt_block_indexes=(1, 3), tie_word_embeddings=True), 3),
}
LAYOUTS = ((1, 1), (2, 1), (1, 2), (2, 2))


def hf_config(name: str) -> dict:
    return tiny_qwen25vl_config(**MODELS[name][0]).to_dict()


def build(name: str, tp: int, pp: int, dtype: torch.dtype) -> Qwen25VLModel:
    layout = ParallelLayout(tp=tp, pp=pp, first_stage_layers=MODELS[name][1] if pp > 1 else None)
    runtime.initialize_distributed(layout, seed=1)
    config = qwen25vl_config_from_hf(hf_config(name), layout=layout, params_dtype=dtype)
    return Qwen25VLModel(config, pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage())


def distributed_optimizer_states(name: str, tp: int, pp: int, bucket_size: int) -> dict:
    model = build(name, tp, pp, torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    ddp = DistributedDataParallel(
        model.language_model.config,
        DistributedDataParallelConfig(use_distributed_optimizer=True, grad_reduce_in_fp32=True,
                                      overlap_grad_reduce=True, bucket_size=bucket_size),
        model)
    shard = 0
    for buffer in ddp.buffers:
        for buckets in DistributedOptimizer._build_gbuf_range_map(buffer).values():
            shard += sum(r["param"].size for bucket in buckets for r in bucket["param_map"].values())
    return {
        "stage": ps.get_pipeline_model_parallel_rank(), "dp_rank": ps.get_data_parallel_rank(),
        "dp_size": ps.get_data_parallel_world_size(), "parameters": params,
        "weights": sum(b.param_data.nbytes for b in ddp.buffers),
        "gradients": sum(b.grad_data.nbytes for b in ddp.buffers),
        "shard_parameters": shard,
        "buckets": sum(len(b.buckets) for b in ddp.buffers),
    }


def adam_states(name: str, tp: int, pp: int) -> int:
    """Bytes of Adam's state tensors after one step of Megatron's fp32 (non-distributed) optimizer."""
    model = build(name, tp, pp, torch.float32)
    ddp = DistributedDataParallel(model.language_model.config, DistributedDataParallelConfig(), model)
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-4, bf16=False, fp16=False), [ddp])
    for p in ddp.parameters():
        p.main_grad.fill_(1e-3)
    optimizer.step()
    return sum(t.nbytes for state in optimizer.optimizer.state.values() for t in state.values()
               if torch.is_tensor(t) and t.dim() > 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--bucket-size", type=int, required=True)
    parser.add_argument("--adam", action="store_true", help="also measure the fp32 Adam state")
    args = parser.parse_args()
    results = {}
    for tp, pp in LAYOUTS:
        result = distributed_optimizer_states(args.model, tp, pp, args.bucket_size)
        if args.adam:
            result["adam_state"] = adam_states(args.model, tp, pp)
        results[f"tp{tp}_pp{pp}"] = result
    (args.out / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(results, indent=1))
    runtime.destroy()


if __name__ == "__main__":
    main()
