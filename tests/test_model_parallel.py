"""Tensor / pipeline / context / sequence parallel Qwen25VLModel == the unsplit model (2 gloo processes).

Each worker first runs the TP=PP=CP=1 model (data-parallel over both ranks) as the reference,
then re-initializes Megatron's groups and runs the split model with the same weights: logits and
gradients must match. Weights move between layouts with Megatron's own ``dist_checkpointing``
(resharding by the sharded-state-dict keys of docs/checkpoints.md); gradients are compared by
writing them as a "checkpoint" of the split model and loading that into the unsplit layout.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

TOL = 1e-4


def _inputs():
    from tests.vlm_inputs import make_row

    a = make_row([4, (1, 8, 8), 6], seed=5)  # 28 tokens
    b = make_row([3, (1, 6, 10), 2, (1, 4, 4), 8], seed=6)  # 36 tokens
    ids = torch.cat([a[0], b[0]])[None]
    grids, pixels = torch.cat([a[1], b[1]]), torch.cat([a[2], b[2]])
    cu = torch.tensor([0, 28, 64])
    labels = torch.randint(0, 1000, ids.shape, generator=torch.Generator().manual_seed(7))
    return dict(input_ids=ids, pixel_values=pixels, image_grid_thw=grids, cu_seqlens=cu), labels


def _config(**parallel):
    from megatron_vlm.models.config import qwen25vl_config_from_hf
    from megatron_vlm.models.tiny import tiny_qwen25vl_config

    hf = tiny_qwen25vl_config(num_layers=3).to_dict()
    return qwen25vl_config_from_hf(hf, **parallel)


def _init_groups(**sizes):
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(**sizes)


def _reference():
    """Unsplit model with seeded random weights: (model, full logits, grads by name)."""
    from megatron_vlm.models.qwen25vl import Qwen25VLModel
    from tests.vlm_inputs import randomize_weights_

    _init_groups()
    model = Qwen25VLModel(_config())
    randomize_weights_(model, seed=3)
    inputs, labels = _inputs()
    with torch.no_grad():
        logits = model(**inputs)
    model(**inputs, labels=labels).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return model, logits, grads


def _save(model, directory):
    from megatron.core import dist_checkpointing

    directory.mkdir(exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(directory))


def _load(model, directory):
    from megatron.core import dist_checkpointing

    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(directory)))


def _grads_as_weights(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))


def _assert_grads_equal(split_model, ref_grads, tmp):
    """Write the split model's grads as a checkpoint, read them in the unsplit layout, compare."""
    from megatron_vlm.models.qwen25vl import Qwen25VLModel

    _grads_as_weights(split_model)
    _save(split_model, tmp / "grads")
    _init_groups()
    full = Qwen25VLModel(_config())
    _load(full, tmp / "grads")
    for name, p in full.named_parameters():
        diff = (p - ref_grads[name]).abs().max().item()
        assert diff <= TOL, f"grad of {name}: max abs diff {diff}"


def tp_worker(tmp, sequence_parallel: bool):
    from megatron.core import tensor_parallel

    from megatron_vlm.models.qwen25vl import Qwen25VLModel

    ref, ref_logits, ref_grads = _reference()
    _save(ref, tmp / "weights")
    _init_groups(tensor_model_parallel_size=2)
    model = Qwen25VLModel(_config(tensor_model_parallel_size=2, sequence_parallel=sequence_parallel))
    _load(model, tmp / "weights")
    inputs, labels = _inputs()
    with torch.no_grad():
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(model(**inputs))
    assert (logits - ref_logits).abs().max() <= TOL
    model(**inputs, labels=labels).sum().backward()
    if sequence_parallel:  # what Megatron's finalize_model_grads does for sequence-parallel norms
        for p in model.parameters():
            if getattr(p, "sequence_parallel", False):
                torch.distributed.all_reduce(p.grad, group=tensor_parallel.get_tensor_model_parallel_group())
    _assert_grads_equal(model, ref_grads, tmp)


def cp_worker(tmp):
    from megatron.core import parallel_state

    from megatron_vlm.models.context_parallel import cp_slice
    from megatron_vlm.models.qwen25vl import Qwen25VLModel

    ref, ref_logits, ref_grads = _reference()
    _init_groups(context_parallel_size=2)
    model = Qwen25VLModel(_config(context_parallel_size=2))
    model.load_state_dict(ref.state_dict())  # CP does not split weights
    rank = parallel_state.get_context_parallel_rank()
    inputs, labels = _inputs()
    with torch.no_grad():
        logits = model(**inputs)
    assert (logits - cp_slice(ref_logits, 1, 2, rank)).abs().max() <= TOL
    model(**inputs, labels=labels).sum().backward()
    for name, p in model.named_parameters():
        torch.distributed.all_reduce(p.grad, group=parallel_state.get_context_parallel_group())
        diff = (p.grad - ref_grads[name]).abs().max().item()
        assert diff <= TOL, f"grad of {name}: max abs diff {diff}"


def pp_worker(tmp):
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_vlm.models.qwen25vl import Qwen25VLModel

    ref, ref_logits, ref_grads = _reference()
    _save(ref, tmp / "weights")
    _init_groups(pipeline_model_parallel_size=2)
    first = parallel_state.is_pipeline_first_stage()
    last = parallel_state.is_pipeline_last_stage()
    cfg = _config(pipeline_model_parallel_size=2, num_layers_in_first_pipeline_stage=1)
    model = Qwen25VLModel(cfg, pre_process=first, post_process=last)
    assert len(model.language_model.decoder.layers) == (1 if first else 2)
    assert (model.vision_model is not None) == first
    _load(model, tmp / "weights")
    inputs, labels = _inputs()
    outputs = {}

    def step(_iterator, m):
        out = m(**inputs, labels=labels)

        def loss_fn(t):
            return t.sum(), {"loss": t.sum().detach()}

        return out, loss_fn

    get_forward_backward_func()(
        forward_step_func=step, data_iterator=iter([None]), model=[model], num_microbatches=1,
        seq_length=inputs["input_ids"].shape[1], micro_batch_size=1, forward_only=False,
        collect_non_loss_data=False) and None
    ref_loss = None
    if last:
        with torch.no_grad():
            ref_loss = ref(**inputs, labels=labels).sum()
        outputs["loss"] = ref_loss
    _assert_grads_equal(model, ref_grads, tmp)
    del ref_logits


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp2", "tp2_sp"])
def test_tensor_parallel_equals_unsplit(tmp_path, sequence_parallel):
    from tests.distributed import run_distributed

    run_distributed(tp_worker, world_size=2, tmp=tmp_path, sequence_parallel=sequence_parallel)


def test_context_parallel_equals_unsplit(tmp_path):
    from tests.distributed import run_distributed

    run_distributed(cp_worker, world_size=2, tmp=tmp_path)


def test_pipeline_parallel_equals_unsplit(tmp_path):
    from tests.distributed import run_distributed

    run_distributed(pp_worker, world_size=2, tmp=tmp_path)
