"""Shared fixtures: tiny random Qwen2.5-VL and Qwen3-VL checkpoints, the offline tokenizers, the real PDFs, a
small built dataset.

Every test computes on the CPU (gloo, fp32: the tolerances are set for it), also on a machine with
a GPU: ``LONGVLM_DEVICE=cpu`` is set for this process and every process it starts (workers,
CLI runs). Tests marked ``gpu`` run with ``LONGVLM_DEVICE=cuda`` instead; the ``cuda`` fixture
gives them a one-process runtime on the GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PDF_DIR = REPO / "longvlm" / "demo_pdfs"

os.environ["LONGVLM_DEVICE"] = "cpu"  # megatron_vlm.runtime.placement: the one place that decides


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def pdf_dir() -> Path:
    """The real born-digital PDFs (see longvlm/demo_pdfs/SOURCES.md)."""
    return PDF_DIR


@pytest.fixture(scope="session")
def real_pdfs(pdf_dir) -> list[Path]:
    return sorted(pdf_dir.glob("*.pdf"))


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory) -> Path:
    """A Hugging Face tokenizer directory: real Qwen BPE vocabulary, Qwen2.5-VL chat template."""
    from megatron_vlm.tokenizer import write_offline_tokenizer

    return write_offline_tokenizer(tmp_path_factory.mktemp("qwen_tokenizer"))


@pytest.fixture(scope="session")
def qwen3vl_tokenizer_dir(tmp_path_factory) -> Path:
    """Qwen3-VL's tokenizer directory: the same vocabulary with all of Qwen3's added tokens, Qwen3-VL's template."""
    from megatron_vlm.tokenizer import write_offline_tokenizer

    return write_offline_tokenizer(tmp_path_factory.mktemp("qwen3vl_tokenizer"), "qwen3_vl")


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def convert_to_megatron(tmp_path_factory):
    """``convert(hf_dir, tp, pp)``: the Megatron checkpoint of an HF checkpoint, converted once per layout."""
    from longvlm import api

    cache: dict[tuple[str, int, int], Path] = {}

    def convert(hf_dir: Path, tp: int, pp: int) -> Path:
        key = (str(hf_dir), tp, pp)
        if key not in cache:
            out = tmp_path_factory.mktemp("meg") / f"tp{tp}pp{pp}"
            api.convert("hf-to-megatron", hf=str(hf_dir), out=str(out), tp=tp, pp=pp)
            cache[key] = out
        return cache[key]

    return convert


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint (fp32, sharded safetensors + index), built from a config."""
    from megatron_vlm.models.registry import get_family

    return get_family("qwen2_5_vl").save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen25vl"), seed=0, max_shard_size="20MB")


@pytest.fixture(scope="session")
def tiny_qwen3vl_checkpoint(tmp_path_factory) -> Path:
    """A tiny random Qwen3-VL checkpoint (fp32, O(1) weights so a mapping error moves the logits; 3 language
    layers, DeepStack into layers 0 and 1; sharded safetensors + index), built from a config."""
    from helpers.vlm_inputs import randomize_weights_
    from transformers import Qwen3VLForConditionalGeneration

    from megatron_vlm.models.qwen3vl.tiny import tiny_qwen3vl_config

    model = Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(num_layers=3)).eval()
    randomize_weights_(model, seed=5)
    out = tmp_path_factory.mktemp("tiny_qwen3vl") / "hf"
    model.save_pretrained(out, max_shard_size="20MB")
    return out


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory, pdf_dir) -> Path:
    """A real pool of two short PDFs (float: 12 pages, booktabs: 18) at 36 dpi: 165 tokens a page."""
    from longvlm import api

    out = tmp_path_factory.mktemp("small_pool") / "pool"
    api.pool(inputs=[str(pdf_dir / "float.pdf"), str(pdf_dir / "booktabs.pdf")], output=str(out), min_pages=0,
             max_pages=0, dpi=36, progress=False)
    return out


@pytest.fixture(scope="session")
def train_inputs(tmp_path_factory, qwen_tokenizer_dir, convert_to_megatron) -> dict:
    """A tiny HF checkpoint (4 LM layers), its Megatron conversion (runs start from it: no conversion per
    run) and a copied-pages dataset whose packs differ in answer tokens (``tests/helpers/training.py``);
    run directories go into its ``tmp``."""
    from helpers.training import make_train_inputs

    inputs = make_train_inputs(tmp_path_factory.mktemp("train"), qwen_tokenizer_dir)
    return {**inputs, "megatron": convert_to_megatron(inputs["hf"], 1, 1)}


@pytest.fixture(scope="module")
def megatron_single():
    """Megatron-Core's process groups for one process (module-wide, on the CPU); yields the device."""
    from megatron_vlm import runtime

    runtime.initialize_distributed(seed=1234, environ={})
    yield runtime.device()
    runtime.destroy()


@pytest.fixture(autouse=True)
def _gpu_tests_lift_the_cpu_pin(request, monkeypatch):
    """A test marked ``gpu`` computes on the GPU: ``LONGVLM_DEVICE=cuda`` for it and what it starts
    (e.g. ``api.train``, which starts its own runtime)."""
    if request.node.get_closest_marker("gpu"):
        monkeypatch.setenv("LONGVLM_DEVICE", "cuda")


@pytest.fixture(scope="module")
def cuda():
    """For ``gpu`` tests: one process on its GPU (NCCL, no CPU shims); yields the CUDA device."""
    from megatron_vlm import runtime

    mp = pytest.MonkeyPatch()
    mp.setenv(runtime.DEVICE_ENV, "cuda")
    runtime.destroy()
    runtime.initialize_distributed(seed=1234, environ={})
    yield runtime.device()
    runtime.destroy()
    mp.undo()


@pytest.fixture(scope="session")
def built(tmp_path_factory, qwen_tokenizer_dir):
    """A small built dataset (loader and tuner tests): 5 documents of 2-6 pages of three sizes, three VQA
    tasks each, packed into 512-token rows. Returns ``(prefix, pool, task rows)``."""
    from helpers.build_fakes import FakePool, write_tasks

    from preprocess.dataset.config import BuildConfig
    from preprocess.dataset.run import build

    tmp = tmp_path_factory.mktemp("built")
    sizes = {f"{i:064x}": [(56 * (1 + (i + p) % 3), 28 * (2 + p % 2)) for p in range(2 + i)] for i in range(5)}
    pool = FakePool(tmp / "pool", sizes).register()
    rows = [{"task": t, "doc_id": d, "question": f"Q{i}: {t} on page 1?", "answer": f"A{i} {t}"}
            for i, d in enumerate(sizes) for t in ("extract-single", "extract-multi", "reasoning")]
    tasks = write_tasks(tmp / "tasks.jsonl", rows)
    cfg = BuildConfig(tasks=[str(tasks)], pool=str(tmp / "pool"), tokenizer=str(qwen_tokenizer_dir),
                      output=str(tmp / "data"), seq_length=512, token_budget=12000, progress=False,
                      max_repeats=1000)
    build(cfg, pool=pool)
    return tmp / "data", pool, rows


@pytest.fixture(scope="session")
def built_qwen3vl(built, qwen3vl_tokenizer_dir):
    """``built``'s tasks and pool (pages rendered for Qwen2.5-VL's 28-pixel grid) built for Qwen3-VL with its
    tokenizer: pages are resized to its 32-pixel grid at load time. Returns ``(prefix, pool)``."""
    from preprocess.dataset.config import BuildConfig
    from preprocess.dataset.run import build

    prefix, pool, _ = built
    cfg = BuildConfig(tasks=[str(prefix.parent / "tasks.jsonl")], pool=str(prefix.parent / "pool"),
                      tokenizer=str(qwen3vl_tokenizer_dir), output=str(prefix.parent / "data_qwen3vl"),
                      family="qwen3_vl", seq_length=512, token_budget=12000, progress=False, max_repeats=1000)
    build(cfg, pool=pool)
    return prefix.parent / "data_qwen3vl", pool


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster for the session (``tests/helpers/slurm_cluster.py``); ``SLURM_CONF`` points at it."""
    from helpers.slurm_cluster import SlurmCluster, missing_binaries

    missing = missing_binaries()
    if missing:
        pytest.skip(f"needs Debian's slurm-wlm and munge ({', '.join(missing)} not found): "
                    "apt-get install slurm-wlm munge (.ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster runs slurmd as root, and this is not root")
    with pytest.MonkeyPatch.context() as patch, SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        patch.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster
