"""Worker for tests/test_model_parallel.py: split layouts of each family's model vs the unsplit model (2 ranks).

Cases are ``FAMILY:LAYOUT`` (e.g. ``qwen3_vl:pp2``). Per family, first the reference: TP=PP=CP=1 (the two ranks are data-parallel replicas) with seeded random
weights on a packed row of two samples with three images; logits, per-token loss and gradients
are kept and the weights saved with ``dist_checkpointing``. Then for each of its layouts the
groups are rebuilt, the weights loaded (resharded by the sharded-state-dict keys of
docs/checkpoints.md), the same row run forward and backward, and the largest differences
recorded: logits, per-token loss and every parameter's gradient as a relative error
(``max|x - ref| / max|ref|``, the worst parameter named). ``*_masked`` layouts pass a ``loss_mask`` (the output layer then runs on the masked
tokens only) and are compared with the unsplit model's full per-token loss times the mask and the
gradients of that product's sum. Gradients of TP/PP layouts are compared by saving them as a checkpoint of the split
model and loading that into the unsplit layout. CP ranks are compared with the reference's tokens
at hand-written indices of the per-sample zig-zag split (``CP_TOKENS``), not with the code's own
split. ``padded`` is the packed row as Transformer Engine's THD layout wants it for CP=4: each sample
padded to a multiple of 8 (``cu_seqlens`` real, ``cu_seqlens_padded``), compared at its real tokens
with the unpadded reference. Each rank writes ``rank{R}.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (helpers)

from helpers import vlm_inputs  # noqa: E402
from helpers.vlm_inputs import randomize_weights_  # noqa: E402

from megatron_vlm import runtime  # noqa: E402
from megatron_vlm.models.registry import get_family  # noqa: E402
from megatron_vlm.parallel import ParallelLayout  # noqa: E402

TP2, TP2_SP, CP2 = ParallelLayout(tp=2), ParallelLayout(tp=2, sp=True), ParallelLayout(cp=2)
PP2 = ParallelLayout(pp=2, first_stage_layers=1)
TP2_CP2_SP = ParallelLayout(tp=2, cp=2, sp=True)
CP4 = ParallelLayout(cp=4)
# name -> (layout, extra config fields, batch, loss mask or None)
LAYOUTS = {
    "tp2": (TP2, {}, "packed", None),
    "tp2_sp": (TP2_SP, {}, "packed", None),
    # activation recomputation in both towers: segments travel through megatron's checkpointing
    "tp2_sp_recompute": (TP2_SP, dict(recompute="full"), "packed", None),
    "pp2": (PP2, {}, "packed", None),
    "cp2": (CP2, {}, "packed", None),
    # rank 0 encodes the only image but holds none of its tokens; rank 1 encodes nothing
    "cp2_one_image": (CP2, {}, "one_image", None),
    "tp2_sp_masked": (TP2_SP, {}, "packed", "answers"),
    "pp2_masked": (PP2, {}, "packed", "answers"),
    "cp2_masked": (CP2, {}, "packed", "answers"),
    # 4 processes (not in the default 2-process run): --cases FAMILY:tp2_cp2_sp ...
    "tp2_cp2_sp": (TP2_CP2_SP, {}, "packed", None),
    # no masked token on CP rank 0: its TP pair runs the output layer on 0 rows
    "tp2_cp2_sp_masked": (TP2_CP2_SP, {}, "packed", "one_rank"),
    # 4 processes: samples padded for CP=4 (loss on the real tokens only)
    "cp4_padded": (CP4, {}, "padded", "real"),
}


# The per-sample zig-zag split of docs/model.md written out by hand: every packed sample cut into
# 2*CP chunks, rank r keeps chunks r and 2*CP-1-r of each. "packed": samples of 28 (chunks of 7) and
# 36 tokens (chunks of 9); "one_image": one sample of 44 (chunks of 11); "padded" (CP=4): samples padded
# to 32 (chunks of 4) and 40 (chunks of 5, from token 32).
CP_TOKENS = {
    ("packed", 2): {0: [*range(0, 7), *range(21, 28), *range(28, 37), *range(55, 64)],
                    1: [*range(7, 21), *range(37, 55)]},
    ("one_image", 2): {0: [*range(0, 11), *range(33, 44)], 1: list(range(11, 33))},
    ("padded", 4): {0: [0, 1, 2, 3, 28, 29, 30, 31, 32, 33, 34, 35, 36, 67, 68, 69, 70, 71],
                    1: [4, 5, 6, 7, 24, 25, 26, 27, 37, 38, 39, 40, 41, 62, 63, 64, 65, 66],
                    2: [8, 9, 10, 11, 20, 21, 22, 23, 42, 43, 44, 45, 46, 57, 58, 59, 60, 61],
                    3: [12, 13, 14, 15, 16, 17, 18, 19, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56]},
}
PADDED = {"lengths": (28, 36), "padded": (32, 40)}


def reference_position(batch_name: str, position: int) -> int | None:
    """The unpadded reference's token at ``position`` of the batch (``None``: padding)."""
    if batch_name != "padded":
        return position
    (a, b), (pa, _) = PADDED["lengths"], PADDED["padded"]
    if position < a:
        return position
    if pa <= position < pa + b:
        return position - pa + a
    return None


# 3 language layers; Qwen3-VL's DeepStack feeds layers 0 and 1 (from vision layers 0 and 2), so PP2 with one
# layer on the first stage puts a stage boundary between the two DeepStack layers.
FAMILY = get_family("qwen2_5_vl")


def config(layout=None, **extra):
    hf = FAMILY.tiny_config(num_layers=3).to_dict()
    return FAMILY.config_from_hf(hf, layout=layout, **extra)


def build(cfg, **kwargs):
    return FAMILY.model_class(cfg, **kwargs)


def make_row(parts, seed):
    return vlm_inputs.make_row(parts, seed=seed, patch_dim=FAMILY.geometry.patch_dim)


def batch(name: str = "packed"):
    """``packed``: a row of two samples (28 + 36 tokens, three images of different shapes);
    ``one_image``: 44 tokens, the image's tokens at 11..26; ``padded``: ``packed`` with each sample padded
    to a multiple of 8 (``PADDED``). Returns the inputs and labels."""
    if name == "padded":
        inputs, labels = batch("packed")
        keep = torch.tensor([p for p in range(sum(PADDED["padded"])) if reference_position(name, p) is not None])
        ids = torch.full((1, sum(PADDED["padded"])), 151643)
        ids[0, keep] = inputs["input_ids"][0]
        padded_labels = torch.zeros_like(ids)
        padded_labels[0, keep] = labels[0]
        inputs = dict(inputs, input_ids=ids, cu_seqlens=torch.tensor([0, 28, 64]),
                      cu_seqlens_padded=torch.tensor([0, 32, 72]))
        return inputs, padded_labels
    if name == "packed":
        a = make_row([4, (1, 8, 8), 6], seed=5)
        b = make_row([3, (1, 6, 10), 2, (1, 4, 4), 8], seed=6)
        ids = torch.cat([a[0], b[0]])[None]
        inputs = dict(input_ids=ids, pixel_values=torch.cat([a[2], b[2]]), image_grid_thw=torch.cat([a[1], b[1]]),
                      cu_seqlens=torch.tensor([0, len(a[0]), ids.shape[1]]))
    else:
        ids, grids, pixels = make_row([10, (1, 8, 8), 16], seed=8)
        inputs = dict(input_ids=ids[None], pixel_values=pixels, image_grid_thw=grids)
    labels = torch.randint(0, 1000, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(7))
    return inputs, labels


def loss_mask(name: str, labels: torch.Tensor) -> torch.Tensor:
    """``answers``: tokens 20..23 (sample 1) and 58..62 (sample 2), on both CP ranks and both SP halves;
    ``one_rank``: tokens 8..12 only (all in CP rank 1's chunks); ``real``: every token but the padding of
    the ``padded`` batch."""
    if name == "real":
        return torch.tensor([[reference_position("padded", p) is not None for p in range(labels.shape[1])]]).long()
    mask = torch.zeros_like(labels)
    if name == "one_rank":
        mask[:, 8:13] = 1
    else:
        mask[:, 20:24] = 1
        mask[:, 58:63] = 1
    return mask


def save(model, path: Path) -> None:
    if torch.distributed.get_rank() == 0:
        path.mkdir(parents=True)
    torch.distributed.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(path))


def load(model, path: Path) -> None:
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(path)))


def grads_in_unsplit_layout(model, path: Path) -> dict[str, torch.Tensor]:
    """Save ``model``'s gradients as its weights and read them back in the TP=PP=1 layout."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    save(model, path)
    runtime.initialize_distributed(seed=1)
    full = build(config())
    load(full, path)
    return {n: p.detach() for n, p in full.named_parameters()}


def tp_summed(name: str, param, model) -> bool:
    """Whether megatron-core's ``finalize_model_grads`` sums this parameter's gradient over TP: norms marked
    sequence-parallel (under SP), and q/k norms (``qk_layernorm``), whose heads are split over TP."""
    config = model.model_config.language
    return (config.sequence_parallel and getattr(param, "sequence_parallel", False)) or \
        (config.qk_layernorm and ("q_layernorm" in name or "k_layernorm" in name))


def relative(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|x - ref| / max|ref|``; ``max|x - ref|`` where ``ref`` is all zero (e.g. the loss of a CP rank
    without answer tokens)."""
    diff, scale = (x - ref).abs().max(), ref.abs().max()
    return (diff / scale if scale > 0 else diff).item()


def max_grad_diff(grads, ref_grads) -> tuple[float, str]:
    """The worst relative gradient error over all parameters (every reference parameter must be there)."""
    assert grads.keys() == ref_grads.keys(), sorted(set(grads) ^ set(ref_grads))
    diffs = {n: relative(g, ref_grads[n]) for n, g in grads.items()}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def reference(out: Path, cases) -> dict:
    """Unsplit model: saved weights, and per (batch, mask) case the logits, per-token loss (times the mask)
    and gradients of its sum."""
    runtime.initialize_distributed(seed=1)
    model = build(config())
    randomize_weights_(model, seed=3)
    save(model, out / "weights")
    ref = {}
    for key in cases:
        name, mask_name = ("packed", None) if key[0] == "padded" else key  # the unpadded row is the reference
        model.zero_grad(set_to_none=True)
        inputs, labels = batch(name)
        with torch.no_grad():
            logits = model(**inputs)
        loss = model(**inputs, labels=labels)
        if mask_name:
            loss = loss * loss_mask(mask_name, labels)
        loss.sum().backward()
        ref[key] = (logits, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    return ref


def run_tp(name, layout, extra, out, ref, mask_name):
    ref_logits, ref_loss, ref_grads = ref
    runtime.initialize_distributed(layout, seed=1)
    model = build(config(layout, **extra))
    load(model, out / "weights")
    inputs, labels = batch()
    with torch.no_grad():
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(model(**inputs))
    loss = model(**inputs, labels=labels, loss_mask=mask_name and loss_mask(mask_name, labels))
    loss.sum().backward()
    for n, p in model.named_parameters():  # what finalize_model_grads does for sequence-parallel and q/k norms
        if tp_summed(n, p, model) and p.grad is not None:
            torch.distributed.all_reduce(p.grad, group=ps.get_tensor_model_parallel_group())
    grad_diff, worst = max_grad_diff(grads_in_unsplit_layout(model, out / f"grads_{name}"), ref_grads)
    return dict(logits=relative(logits, ref_logits), loss=relative(loss.detach(), ref_loss),
                grads=grad_diff, worst_grad=worst)


def run_pp(name, layout, extra, out, ref, mask_name):
    ref_logits, ref_loss, ref_grads = ref
    runtime.initialize_distributed(layout, seed=1)
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    model = build(config(layout, **extra), pre_process=first, post_process=last)
    load(model, out / "weights")
    inputs, labels = batch()

    def step(_iterator, m):
        def loss_func(per_token):
            return per_token.sum(), {"loss": per_token.sum().detach()}

        return m(**inputs, labels=labels, loss_mask=mask_name and loss_mask(mask_name, labels)), loss_func

    def logits_step(_iterator, m):
        return m(**inputs), lambda logits: (logits.sum(), {"logits": logits.detach()})

    schedule = get_forward_backward_func()
    with torch.no_grad():
        outputs = schedule(forward_step_func=logits_step, data_iterator=iter([None]), model=[model],
                           num_microbatches=1, seq_length=inputs["input_ids"].shape[1], micro_batch_size=1,
                           forward_only=True)
    losses = schedule(
        forward_step_func=step, data_iterator=iter([None]), model=[model], num_microbatches=1,
        seq_length=inputs["input_ids"].shape[1], micro_batch_size=1, forward_only=False)
    result = dict(stage_layers=len(model.language_model.decoder.layers), has_vision=model.vision_model is not None)
    if last:
        result["logits"] = relative(outputs[0]["logits"], ref_logits)
        result["loss"] = abs(losses[0]["loss"].item() - ref_loss.sum().item()) / ref_loss.sum().abs().item()
    result["grads"], result["worst_grad"] = max_grad_diff(grads_in_unsplit_layout(model, out / f"grads_{name}"),
                                                          ref_grads)
    return result


def run_cp(name, layout, extra, out, ref, batch_name, mask_name):
    ref_logits, ref_loss, ref_grads = ref
    runtime.initialize_distributed(layout, seed=1)
    model = build(config(layout, **extra))
    load(model, out / "weights")
    rank, size = ps.get_context_parallel_rank(), ps.get_context_parallel_world_size()
    inputs, labels = batch(batch_name)
    with torch.no_grad():
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(model(**inputs))
    loss = model(**inputs, labels=labels, loss_mask=mask_name and loss_mask(mask_name, labels))
    loss.sum().backward()
    grads = {}
    for n, p in model.named_parameters():  # what the data-parallel (incl. CP) grad reduction does
        grads[n] = p.grad if p.grad is not None else torch.zeros_like(p)  # no image on this rank
        torch.distributed.all_reduce(grads[n], group=ps.get_context_parallel_group())
        if tp_summed(n, p, model) and ps.get_tensor_model_parallel_world_size() > 1:
            torch.distributed.all_reduce(grads[n], group=ps.get_tensor_model_parallel_group())
        p.grad = grads[n]
    if ps.get_tensor_model_parallel_world_size() > 1:
        grads = grads_in_unsplit_layout(model, out / f"grads_{name}")
    grad_diff, worst = max_grad_diff(grads, ref_grads)
    tokens = CP_TOKENS[batch_name, size][rank]
    real = [k for k, p in enumerate(tokens) if reference_position(batch_name, p) is not None]
    mine = torch.tensor([reference_position(batch_name, tokens[k]) for k in real])
    real = torch.tensor(real)
    return dict(logits=relative(logits[:, real], ref_logits[:, mine]),
                loss=relative(loss.detach()[:, real], ref_loss[:, mine]), grads=grad_diff, worst_grad=worst)


DEFAULT_CASES = {  # the 2-process run; Qwen3-VL: TP with q/k norms, SP + recompute through DeepStack, a PP
    # boundary between the DeepStack layers, CP with features at each rank's image tokens
    "qwen2_5_vl": [n for n, (layout, *_) in LAYOUTS.items() if layout.model_parallel_size <= 2],
    "qwen3_vl": ["tp2", "tp2_sp_recompute", "pp2", "pp2_masked", "cp2", "cp2_one_image"],
}


def main() -> None:
    global FAMILY
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", help="FAMILY:LAYOUT; default: DEFAULT_CASES",
                        default=[f"{f}:{n}" for f, names in DEFAULT_CASES.items() for n in names])
    args = parser.parse_args()
    results = {}
    for family in dict.fromkeys(case.split(":")[0] for case in args.cases):
        FAMILY = get_family(family)
        names = [case.split(":")[1] for case in args.cases if case.split(":")[0] == family]
        out = args.out / family
        runtime.initialize_distributed(seed=1)
        ref = reference(out, sorted({tuple(LAYOUTS[n][2:]) for n in names}, key=str))
        for name in names:
            layout, extra, batch_name, mask_name = LAYOUTS[name]
            case = ref[batch_name, mask_name]
            try:
                if layout.cp > 1:
                    result = run_cp(name, layout, extra, out, case, batch_name, mask_name)
                elif layout.pp > 1:
                    result = run_pp(name, layout, extra, out, case, mask_name)
                else:
                    result = run_tp(name, layout, extra, out, case, mask_name)
            except Exception:
                result = {"error": traceback.format_exc()}
            results[f"{family}:{name}"] = result
    rank = torch.distributed.get_rank()
    (args.out / f"rank{rank}.json").write_text(json.dumps(results, indent=1))
    runtime.destroy()


if __name__ == "__main__":
    main()
