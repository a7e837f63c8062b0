"""``longvlm train`` on a CUDA GPU: bf16 with the distributed optimizer, asynchronous saves, exact resume; FP8
with Transformer Engine's linears against bf16."""

from __future__ import annotations

import math

import pytest
from helpers.training import records, rewind, train_overrides

pytestmark = pytest.mark.gpu


def test_bf16_distributed_optimizer_trains_saves_and_resumes(train_inputs, tmp_path):
    from longvlm import api

    run_dir = tmp_path / "run"
    gpu = {"train.precision": "bf16", "optimizer.distributed_optimizer": "true", "checkpoint.async_save": "true",
           "checkpoint.save_interval": 1}
    assert api.train("tiny-cpu", output=str(run_dir), overrides=train_overrides(train_inputs, 3, **gpu)) == 0
    first = records(run_dir)
    assert len(first) == 3 and all(math.isfinite(r["loss"]) for r in first) and first[-1]["loss"] < first[0]["loss"]
    assert (run_dir / "checkpoints" / "iter_0000003" / "longvlm.json").is_file()  # async save committed
    rewind(run_dir, 1)
    assert api.train("tiny-cpu", output=str(run_dir), overrides=train_overrides(train_inputs, 3, **gpu)) == 0
    again = records(run_dir)
    # bf16 on a GPU is not bitwise reproducible across runs (atomics in the kernels): equal within 1e-2
    assert [r["loss"] for r in again[1:]] == pytest.approx([r["loss"] for r in first[1:]], abs=1e-2)


# FP8 rounds GEMM inputs to 3 mantissa bits (E4M3) with per-tensor scales: on this tiny model a step's loss
# moves by a few percent against bf16 from the same start; a wrong scale or a missing cast moves it by O(1).
FP8_STEP_TOL, FP8_MEAN_TOL = 0.05, 0.02


@pytest.mark.parametrize("attention", ["torch", "te"])
def test_fp8_trains_like_bf16_for_20_steps(train_inputs, tmp_path, attention):
    """Transformer Engine's linears in FP8 (with either core attention) against the same run in bf16: per-step
    losses within FP8_STEP_TOL relative, their mean within FP8_MEAN_TOL, and the FP8 run learns."""
    pytest.importorskip("transformer_engine.pytorch")
    import torch

    from longvlm import api

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 GEMMs need a GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell)")
    runs = {}
    for precision in ("bf16", "fp8"):
        run_dir = tmp_path / precision
        extra = {"train.precision": precision, "model.transformer_impl": "te", "model.attention_backend": attention,
                 "optimizer.distributed_optimizer": "true"}
        assert api.train("tiny-cpu", output=str(run_dir), overrides=train_overrides(train_inputs, 20, **extra)) == 0
        runs[precision] = [r["loss"] for r in records(run_dir)]
    bf16, fp8 = runs["bf16"], runs["fp8"]
    assert len(bf16) == len(fp8) == 20
    diffs = [abs(a - b) / abs(b) for a, b in zip(fp8, bf16)]
    assert max(diffs) <= FP8_STEP_TOL and sum(diffs) / len(diffs) <= FP8_MEAN_TOL, diffs
    assert fp8[-1] < fp8[0]
