"""Tensor / sequence / pipeline / context parallel models of each family == the unsplit model (gloo processes).

One 2-process run of tests/workers/vlm_parallel.py computes every layout of both families against
their TP=PP=CP=1 references; the tests below read its per-rank results. Qwen3-VL's layouts put a
pipeline boundary between its DeepStack layers and carry the features through SP, recompute and CP.
"""

from __future__ import annotations

import json

import pytest
from helpers.distributed import run_distributed

pytestmark = pytest.mark.slow

TOL = 1e-5  # relative (max|x - ref| / max|ref|), fp32, O(1) weights; measured <= 2e-6
# Gradients of a loss on a few answer tokens reach the vision tower through sums that largely cancel:
# the fp32 reference itself is 3e-6 off a float64 run there (measured), CP2 1.1e-5.
TOL_MASKED_GRADS = 3e-5
BOTH = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm_parallel")
    run_distributed("tests/workers/vlm_parallel.py", 2, ["--out", out], timeout=600)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _check(results, case, keys, ranks=None):
    """Each rank in ``ranks`` (default: all) reported every metric of ``keys``, each within its bound; a
    metric a worker did not report fails."""
    for rank in range(len(results)) if ranks is None else ranks:
        got = results[rank][case]
        assert "error" not in got, f"rank {rank}: {got.get('error')}"
        missing = [key for key in keys if key not in got]
        assert not missing, f"{case} rank {rank} did not report {missing}: {got}"
        for key in keys:
            bound = TOL_MASKED_GRADS if key == "grads" and case.endswith("_masked") else TOL
            assert got[key] <= bound, f"{case} rank {rank}: {key} differs by {got[key]} ({got})"


@pytest.mark.parametrize("family", BOTH)
def test_tensor_parallel_2_equals_unsplit(results, family):
    _check(results, f"{family}:tp2", ["logits", "loss", "grads"])


def test_sequence_parallel_with_tp2_equals_unsplit(results):
    _check(results, "qwen2_5_vl:tp2_sp", ["logits", "loss", "grads"])


@pytest.mark.parametrize("family", BOTH)
def test_full_recompute_with_tp2_sp_equals_unsplit(results, family):
    """Both towers recomputed; Qwen3-VL's DeepStack features pass through megatron's checkpointing."""
    _check(results, f"{family}:tp2_sp_recompute", ["logits", "loss", "grads"])


@pytest.mark.parametrize("family", BOTH)
def test_context_parallel_2_equals_unsplit(results, family):
    """Load-balanced 2*CP chunks (each rank's logits and loss compared with the reference's tokens at
    hand-written indices), K/V all-gathered, images split between the two ranks."""
    _check(results, f"{family}:cp2", ["logits", "loss", "grads"])


@pytest.mark.parametrize("family", BOTH)
def test_context_parallel_2_with_one_image_equals_unsplit(results, family):
    """One rank encodes the image without holding its tokens, the other holds them without encoding."""
    _check(results, f"{family}:cp2_one_image", ["logits", "loss", "grads"])


@pytest.mark.parametrize("family", BOTH)
def test_pipeline_parallel_2_equals_unsplit(results, family):
    """Qwen3-VL: language layer 1's DeepStack feature travels from the first stage to the second."""
    case = f"{family}:pp2"
    _check(results, case, ["grads"])
    _check(results, case, ["logits", "loss"], ranks=[1])  # the last stage has the output layer
    first, last = results[0][case], results[1][case]
    # vision tower and 1 of the 3 language layers on the first stage, 2 on the last
    assert (first["has_vision"], first["stage_layers"]) == (True, 1)
    assert (last["has_vision"], last["stage_layers"]) == (False, 2)


def test_loss_mask_with_tp2_sp_equals_masked_unsplit(results):
    """loss_mask: the masked tokens gathered from both SP halves; loss and gradients == unsplit loss * mask."""
    _check(results, "qwen2_5_vl:tp2_sp_masked", ["loss", "grads"])


@pytest.mark.parametrize("family", BOTH)
def test_loss_mask_with_pp2_equals_masked_unsplit(results, family):
    _check(results, f"{family}:pp2_masked", ["grads"])
    _check(results, f"{family}:pp2_masked", ["loss"], ranks=[1])


def test_loss_mask_with_cp2_equals_masked_unsplit(results):
    """Each CP rank computes the loss of the masked tokens among its own chunks."""
    _check(results, "qwen2_5_vl:cp2_masked", ["loss", "grads"])


def test_four_process_layouts(tmp_path):
    """One 4-process run (gloo), both families: TP x CP x SP together, also with a loss_mask that leaves one
    CP rank's TP pair no masked token; and CP=4 over samples padded to multiples of 8 (Transformer Engine's
    THD layout), at the real tokens: logits, loss and gradients equal the unsplit model."""
    cases = ["qwen2_5_vl:tp2_cp2_sp", "qwen2_5_vl:tp2_cp2_sp_masked", "qwen2_5_vl:cp4_padded", "qwen3_vl:tp2_cp2_sp"]
    run_distributed("tests/workers/vlm_parallel.py", 4, ["--out", tmp_path, "--cases", *cases], timeout=600)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    for case in cases:
        _check(results, case, ["logits", "loss", "grads"])
