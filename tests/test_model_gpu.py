"""GPU checks of the models: bf16 parity with transformers (both families: Qwen3-VL's TE LayerNorm tower and
q/k TE norms included) for every combination of linears (``transformer_impl`` local / te) and core attention
(``attention_backend`` torch / te), bf16 vs fp32,
Transformer Engine's parts vs the local ones (same weights) on packed samples with THD padding, and
(two GPUs) context parallelism over packed rows with TE's attention vs the torch backend. Run on the
process's GPU (the ``cuda`` fixture lifts the suite's CPU pin).

The bf16 tolerance, and why: bf16 keeps 8 significant bits (unit roundoff 2^-9, 0.2%), and every
matmul, norm and softmax rounds its output once, so the logits of a model in bf16 carry a relative
error of around 1% against the same model in fp32; transformers' own bf16 run shows it. Our model
rounds at other places than transformers (fused QKV, Megatron's layer order of operations), not more
often, so its error against the fp32 reference must be of the same size: at most
``BF16_FACTOR`` x transformers' own error plus ``BF16_SLACK``, and never above ``BF16_CAP``. A
mapping or kernel bug moves O(1) logits by O(1) (test_model_parity.py's weights), 30x beyond that.
"""

from __future__ import annotations

import pytest
import torch
from helpers.hf_to_megatron import load_hf_weights
from helpers.vlm_inputs import IMAGE_PAD, make_row, packed_samples, randomize_weights_

pytestmark = pytest.mark.gpu

BF16_FACTOR, BF16_SLACK, BF16_CAP = 1.5, 2e-3, 3e-2


COMBINATIONS = [("local", "torch"), ("te", "torch"), ("local", "te"), ("te", "te")]


def _needs_te(impl: str, attention: str) -> None:
    if "te" in (impl, attention):
        pytest.importorskip("transformer_engine.pytorch")


def _model(impl: str, attention: str, dtype: torch.dtype, device, hf_config=None, family: str = "qwen2_5_vl"):
    from megatron_vlm.models.registry import get_family

    family = get_family(family)
    hf_config = hf_config or family.tiny_config()
    cfg = family.config_from_hf(hf_config.to_dict(), transformer_impl=impl, attention_backend=attention,
                                params_dtype=dtype)
    return family.model_class(cfg).to(device).eval()


def _transfer(src, dst, tmp_path):
    """Copy weights through a dist checkpoint: the backends share sharded-state-dict keys, not module names."""
    from megatron.core import dist_checkpointing

    dist_checkpointing.save(src.sharded_state_dict(), str(tmp_path))
    dst.load_state_dict(dist_checkpointing.load(dst.sharded_state_dict(), str(tmp_path)))


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm()).item()


def bf16_errors(impl: str, attention: str, device: torch.device, tmp_path, family: str = "qwen2_5_vl") -> dict[str, float]:
    """Relative logit errors against transformers in fp32 (CPU): transformers in bf16 on ``device``,
    and our model in bf16 on ``device``, on one row of text and two images; and top-1 agreements.
    A model with Transformer Engine parts gets its weights from the local one through a dist checkpoint."""
    from megatron_vlm.models.registry import get_family

    hf_config = get_family(family).tiny_config()
    hf = get_family(family).hf_model_class()(hf_config).eval()
    randomize_weights_(hf, seed=0)
    ours = _model("local", "torch", torch.bfloat16, device, hf_config, family)
    load_hf_weights(ours, hf, ours.model_config)
    if (impl, attention) != ("local", "torch"):
        te = _model(impl, attention, torch.bfloat16, device, hf_config, family)
        _transfer(ours, te, tmp_path)
        ours = te
    ids, grids, pixels = make_row([6, (1, 8, 12), 9, (1, 16, 8), 5], seed=3,
                                  patch_dim=get_family(family).geometry.patch_dim)
    kwargs = dict(input_ids=ids[None], pixel_values=pixels, image_grid_thw=grids,
                  mm_token_type_ids=(ids[None] == IMAGE_PAD).int())
    with torch.no_grad():
        ref = hf(**kwargs).logits
        hf_low = hf.to(device, torch.bfloat16)
        hf_bf16 = hf_low(**{k: v.to(device) if k != "pixel_values" else v.to(device, torch.bfloat16)
                            for k, v in kwargs.items()}).logits.float().cpu()
        got = ours(ids[None].to(device), pixel_values=pixels.to(device, torch.bfloat16),
                   image_grid_thw=grids).float().cpu()
    top1 = ref.argmax(-1)
    return dict(transformers=_relative(hf_bf16, ref), ours=_relative(got, ref), ours_vs_transformers=_relative(got, hf_bf16),
                transformers_top1=(hf_bf16.argmax(-1) == top1).float().mean().item(),
                ours_top1=(got.argmax(-1) == top1).float().mean().item())


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("impl, attention", COMBINATIONS)
def test_bf16_logits_match_transformers(cuda, impl, attention, tmp_path, family):
    _needs_te(impl, attention)
    err = bf16_errors(impl, attention, cuda, tmp_path, family)
    bound = min(BF16_FACTOR * err["transformers"] + BF16_SLACK, BF16_CAP)
    assert err["ours"] <= bound, err
    assert err["ours_vs_transformers"] <= 2 * bound, err
    assert err["ours_top1"] >= err["transformers_top1"] - 0.05, err


def test_torch_backend_bf16_close_to_fp32(cuda):
    ref = _model("local", "torch", torch.float32, cuda)
    randomize_weights_(ref, seed=0)
    low = _model("local", "torch", torch.bfloat16, cuda)
    low.load_state_dict({k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
                         for k, v in ref.state_dict().items()})
    inputs = packed_samples(cuda)
    with torch.no_grad():
        a, b = ref(**inputs).float(), low(**inputs).float()
    rel = _relative(b, a)
    assert rel < BF16_CAP, f"bf16 vs fp32 relative error {rel}"
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("impl, attention", COMBINATIONS[1:])
@pytest.mark.parametrize("inputs_name", ["text", "packed", "thd_padded"])
def test_transformer_engine_parts_match_local(cuda, tmp_path, impl, attention, inputs_name):
    """Same weights: TE linears and/or TE attention vs the local layer with torch attention, on rows of text,
    packed samples with images, and packed samples each padded to a multiple of 8 (TE's THD padding: the
    loss and logits at real tokens; padding excluded from attention by cu_seqlens vs cu_seqlens_padded)."""
    _needs_te(impl, attention)
    ref = _model("local", "torch", torch.bfloat16, cuda)
    randomize_weights_(ref, seed=0)
    other = _model(impl, attention, torch.bfloat16, cuda)
    _transfer(ref, other, tmp_path)
    inputs = {"text": lambda: dict(input_ids=torch.randint(0, 1000, (2, 64), device=cuda)),
              "packed": lambda: packed_samples(cuda), "thd_padded": lambda: packed_samples(cuda, pad_to=8)}[inputs_name]()
    with torch.no_grad():
        a, b = ref(**inputs).float(), other(**inputs).float()
    if inputs_name == "thd_padded":
        real = torch.cat([torch.arange(s, s + n) for s, n in zip(inputs["cu_seqlens_padded"][:-1].tolist(),
                                                                  inputs["cu_seqlens"].diff().tolist())])
        a, b = a[:, real], b[:, real]
    rel = _relative(b, a)
    assert rel < 2e-2, f"{impl} linears / {attention} attention vs local / torch: relative error {rel}"


def test_context_parallel_over_packed_rows_te_attention_matches_torch(tmp_path):
    """Two GPUs, CP=2: the te attention backend (Transformer Engine's THD context parallelism, each cp_comm_type)
    and the torch backend on the same per-sample zig-zag split of padded packed samples: per-token loss and
    gradients agree within bf16 tolerance (tests/workers/cp_backends_gpu.py)."""
    pytest.importorskip("transformer_engine.pytorch")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs (context parallelism over NCCL)")
    import json

    from helpers.distributed import run_distributed

    run_distributed("tests/workers/cp_backends_gpu.py", 2, ["--out", tmp_path], timeout=600,
                    env={"LONGVLM_DEVICE": "cuda"})
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for comm, got in result.items():
            assert "error" not in got, f"{comm}: {got['error']}"
            assert got["loss"] < 2e-2 and got["grads"] < 5e-2, (comm, got)
