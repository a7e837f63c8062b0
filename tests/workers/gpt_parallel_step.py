"""Worker for tests/test_runtime.py: one training step of a tiny mRoPE GPT in several layouts.

Run on 2 processes (``tests/helpers/distributed.py``). The reference is TP=1, PP=1 with the two ranks as
data-parallel replicas, each on half of the global batch; its initial weights (O(1)-scaled, so that
every gradient is far above float32 noise) are saved with ``dist_checkpointing``. For each
``--layouts`` entry the groups are rebuilt, the reference's initial checkpoint is loaded
(resharded), the same global batch is trained for one step (2 micro-batches through megatron-core's
pipeline schedule; SGD with global-norm clipping, so the update is proportional to the clipped
gradient and a wrong magnitude shows), and the gradients and the updated weights are saved and
loaded back into a TP=1 model to compare with the reference. Each rank writes ``rank{R}.json`` into
``--out``: per layout, the reference's and the layout's loss and gradient norm, the largest
relative difference per parameter (``max|x - ref| / max|ref|``) of the gradients and of the weight
updates, and the smallest gradient scale of the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.serialization import (
    get_default_load_sharded_strategy,
    get_default_save_sharded_strategy,
)
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
    FullyParallelSaveStrategyWrapper,
)
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer import TransformerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (helpers)

from helpers.vlm_inputs import randomize_weights_  # noqa: E402

from megatron_vlm import runtime  # noqa: E402
from megatron_vlm.parallel import ParallelLayout  # noqa: E402

VOCAB, SEQ, GLOBAL_BATCH, MICRO_BATCH = 128, 16, 4, 2
# name -> (tensor parallel, pipeline parallel, tied embeddings, extra TransformerConfig fields)
LAYOUTS = {
    "tp2": (2, 1, False, {}),
    "pp2": (1, 2, False, {}),
    # the output layer shares the first stage's embedding: an all-reduce across stages keeps them equal
    "pp2_tied": (1, 2, True, {}),
    # activation recomputation replays the forward under saved RNG states (the CPU RNG shims)
    "tp2_recompute": (2, 1, False, {"recompute_granularity": "full", "recompute_method": "uniform",
                                    "recompute_num_layers": 1}),
}


def build_model(tp: int, pp: int, tie: bool = False, **extra) -> tuple[DistributedDataParallel, TransformerConfig]:
    """A tiny Qwen2-style GPT wrapped in Megatron DDP; ``extra`` overrides TransformerConfig fields."""
    fields = dict(
        num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128,
        normalization="RMSNorm", add_qkv_bias=True, add_bias_linear=False, gated_linear_unit=True,
        activation_func=F.silu, bias_activation_fusion=False, hidden_dropout=0.0, attention_dropout=0.0,
        mrope_section=[2, 3, 3], tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        pipeline_dtype=torch.float32, use_cpu_initialization=not runtime.use_cuda(),
    )
    config = TransformerConfig(**{**fields, **extra})
    model = GPTModel(
        config, get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=VOCAB,
        max_sequence_length=SEQ, pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(), share_embeddings_and_output_weights=tie,
        position_embedding_type="mrope", rotary_base=1_000_000,
    ).to(runtime.device())
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    config.no_sync_func = ddp.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    return ddp, config


def global_batch() -> list[dict[str, torch.Tensor]]:
    """The same micro-batches on every rank: tokens, labels, 3-D mRoPE positions, a causal mask."""
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=gen)
    pos = torch.arange(SEQ)
    position_ids = torch.stack([pos, pos // 2, pos % 5])[:, None, :].expand(3, GLOBAL_BATCH, SEQ)
    mask = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), diagonal=1)[None, None]
    dev = runtime.device()
    return [
        {"tokens": tokens[i:i + MICRO_BATCH, :-1].to(dev), "labels": tokens[i:i + MICRO_BATCH, 1:].to(dev),
         "position_ids": position_ids[:, i:i + MICRO_BATCH].contiguous().to(dev), "mask": mask.to(dev)}
        for i in range(0, GLOBAL_BATCH, MICRO_BATCH)
    ]


def forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], batch["mask"], labels=batch["labels"])

    def loss_func(per_token_loss):
        loss = per_token_loss.float().mean()
        return loss, {"loss": loss.detach().clone()}

    return output, loss_func


@contextmanager
def params_hold_grads(model):
    """Temporarily put each parameter's gradient in its place (to save or read grads like weights)."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.data.clone() for p in params]
    for p in params:
        p.data.copy_(p.main_grad)
    try:
        yield
    finally:
        for p, data in zip(params, saved):
            p.data.copy_(data)


def tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def save(model, path: Path) -> None:
    """Save as Megatron-LM does by default: torch_dist, writes spread over data-parallel ranks."""
    if torch.distributed.get_rank() == 0:
        path.mkdir(parents=True)
    torch.distributed.barrier()
    strategy = FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(),
                                                ps.get_data_parallel_group(with_context_parallel=True))
    dist_checkpointing.save(model.sharded_state_dict(), str(path), strategy)


def load(model, path: Path) -> None:
    """Load with reads spread over data-parallel ranks and exchanged between them."""
    strategy = FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(str(path)),
                                                ps.get_data_parallel_group(with_context_parallel=True))
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(path), strategy))


def broadcast_matches(microbatch: dict[str, torch.Tensor]) -> bool:
    """``tensor_parallel.broadcast_data`` hands the first TP rank's batch to the others."""
    keys = ["tokens", "labels"]
    first = ps.get_tensor_model_parallel_rank() == 0
    got = tensor_parallel.broadcast_data(keys, microbatch if first else None, torch.int64)
    return all(torch.equal(got[k].cpu(), microbatch[k].cpu()) for k in keys)


def train_step(ddp, config, microbatches) -> dict:
    """Forward, backward and one Adam step; returns the loss (mean over the global batch)."""
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="sgd", sgd_momentum=0.0, lr=1.0, weight_decay=0.1, clip_grad=1.0), [ddp])
    config.grad_scale_func = optimizer.scale_loss
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(microbatches), model=[ddp],
        num_microbatches=len(microbatches), seq_length=SEQ, micro_batch_size=MICRO_BATCH,
        forward_only=False)
    loss = torch.zeros((), dtype=torch.float64)
    if ps.is_pipeline_last_stage():
        loss += sum(d["loss"].double().cpu() for d in losses) / len(losses)
    # every rank learns the loss: average over data-parallel replicas, sum over pipeline stages
    loss = loss.to(runtime.device())
    torch.distributed.all_reduce(loss, group=ps.get_data_parallel_group())
    loss /= ps.get_data_parallel_world_size()
    torch.distributed.all_reduce(loss, group=ps.get_pipeline_model_parallel_group())
    return {"loss": loss.item(), "optimizer": optimizer}


def max_rel_diff(a: dict, b: dict, names: list[str]) -> float:
    """The largest ``max|a - b| / max|b|`` over the parameters ``names``."""
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in names)


def parameter_names(model) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def reference(tie: bool, out: Path, microbatches) -> dict:
    """TP=1 x DP=2: save the initial weights, train one step, keep gradients and updated weights."""
    runtime.initialize_distributed(seed=1234)
    ddp, config = build_model(1, 1, tie)
    randomize_weights_(ddp.module, seed=5)  # the same on both replicas
    init_dir = out / f"init_tied{int(tie)}"
    save(ddp.module, init_dir)
    init = tensors(ddp.module)
    step = train_step(ddp, config, microbatches[ps.get_data_parallel_rank():][:1])
    with params_hold_grads(ddp.module):
        grads = tensors(ddp.module)
    grad_norm = step["optimizer"].step()[1]
    names = parameter_names(ddp.module)
    update = {k: v - init[k] for k, v in tensors(ddp.module).items()}
    return {"init_dir": init_dir, "init": init, "grads": grads, "update": update, "loss": step["loss"],
            "grad_norm": grad_norm, "names": names,
            "grad_scale_min": min(grads[k].abs().max().item() for k in names),
            "update_scale_min": min(update[k].abs().max().item() for k in names)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    args = parser.parse_args()
    env = runtime.initialize_distributed(seed=1234)
    microbatches = global_batch()
    result = {"rank": env.rank, "launcher": env.launcher, "world_size": env.world_size,
              "backend": torch.distributed.get_backend(), "layouts": {}}
    refs = {}
    for name in args.layouts:
        tp, pp, tie, extra = LAYOUTS[name]
        if tie not in refs:
            refs[tie] = reference(tie, args.out, microbatches)
        ref = refs[tie]
        runtime.initialize_distributed(ParallelLayout(tp=tp, pp=pp), seed=1234)
        ddp, config = build_model(tp, pp, tie, **extra)
        load(ddp.module, ref["init_dir"])
        step = train_step(ddp, config, microbatches)
        broadcast_ok = broadcast_matches(microbatches[0])
        with params_hold_grads(ddp.module):
            save(ddp.module, args.out / f"{name}_grads")
        grad_norm = step["optimizer"].step()[1]
        save(ddp.module, args.out / f"{name}_updated")

        runtime.initialize_distributed(seed=1234)
        check, _ = build_model(1, 1, tie)
        load(check.module, args.out / f"{name}_grads")
        grads_rel = max_rel_diff(tensors(check.module), ref["grads"], ref["names"])
        load(check.module, args.out / f"{name}_updated")
        update = {k: v - ref["init"][k] for k, v in tensors(check.module).items()}
        result["layouts"][name] = {
            "ref_loss": ref["loss"], "ref_grad_norm": ref["grad_norm"], "ref_grad_scale_min": ref["grad_scale_min"],
            "ref_update_scale_min": ref["update_scale_min"],
            "loss": step["loss"], "grad_norm": grad_norm, "grads_rel_diff": grads_rel,
            "update_rel_diff": max_rel_diff(update, ref["update"], ref["names"]),
            "broadcast_matches": broadcast_ok,
        }

    (args.out / f"rank{env.rank}.json").write_text(json.dumps(result, indent=1))
    runtime.destroy()


if __name__ == "__main__":
    main()
