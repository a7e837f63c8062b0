"""GPU checks of Qwen25VLModel: bf16 vs fp32 with the torch backend; te vs torch backends (same weights)."""

from __future__ import annotations

import pytest
import torch
from vlm_inputs import make_row, randomize_weights_

pytestmark = pytest.mark.gpu


def _model(backend: str, dtype: torch.dtype, device):
    from megatron_vlm.models.config import qwen25vl_config_from_hf
    from megatron_vlm.models.qwen25vl import Qwen25VLModel
    from megatron_vlm.models.tiny import tiny_qwen25vl_config

    cfg = qwen25vl_config_from_hf(tiny_qwen25vl_config().to_dict(), attention_backend=backend, params_dtype=dtype)
    return Qwen25VLModel(cfg).to(device).eval()


def _inputs(device):
    a = make_row([5, (1, 16, 12), 7, (1, 8, 28), 9], seed=1)
    b = make_row([4, (1, 10, 14), 20], seed=2)
    ids = torch.cat([a[0], b[0]])[None].to(device)
    return dict(input_ids=ids, pixel_values=torch.cat([a[2], b[2]]).to(device),
                image_grid_thw=torch.cat([a[1], b[1]]), cu_seqlens=torch.tensor([0, len(a[0]), ids.shape[1]]))


def _transfer(src, dst, tmp_path):
    """Copy weights through a dist checkpoint: the backends share sharded-state-dict keys, not module names."""
    from megatron.core import dist_checkpointing

    dist_checkpointing.save(src.sharded_state_dict(), str(tmp_path))
    dst.load_state_dict(dist_checkpointing.load(dst.sharded_state_dict(), str(tmp_path)))


def test_torch_backend_bf16_close_to_fp32(megatron_single):
    ref = _model("torch", torch.float32, megatron_single)
    randomize_weights_(ref, seed=0)
    low = _model("torch", torch.bfloat16, megatron_single)
    low.load_state_dict({k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
                         for k, v in ref.state_dict().items()})
    inputs = _inputs(megatron_single)
    with torch.no_grad():
        a, b = ref(**inputs).float(), low(**inputs).float()
    rel = ((a - b).norm() / a.norm()).item()
    assert rel < 3e-2, f"bf16 vs fp32 relative error {rel}"
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("with_images", [False, True])
def test_te_backend_matches_torch(megatron_single, tmp_path, with_images):
    pytest.importorskip("transformer_engine.pytorch")
    ref = _model("torch", torch.bfloat16, megatron_single)
    randomize_weights_(ref, seed=0)
    te = _model("te", torch.bfloat16, megatron_single)
    _transfer(ref, te, tmp_path)
    inputs = _inputs(megatron_single)
    if not with_images:
        inputs = dict(input_ids=torch.randint(0, 1000, (2, 64), device=megatron_single))
    with torch.no_grad():
        a, b = ref(**inputs).float(), te(**inputs).float()
    rel = ((a - b).norm() / a.norm()).item()
    assert rel < 2e-2, f"te vs torch relative error {rel}"
