"""Shared fixtures: a tiny random Qwen2.5-VL checkpoint, the offline tokenizer, the real PDFs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PDF_DIR = REPO / "longvlm" / "demo_pdfs"


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
    from megatron_vlm.tokenizer import write_offline_qwen_tokenizer

    return write_offline_qwen_tokenizer(tmp_path_factory.mktemp("qwen_tokenizer"))


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
    from megatron_vlm.models.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen25vl"), seed=0, max_shard_size="20MB")


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory, pdf_dir) -> Path:
    """A real pool of two short PDFs (float: 12 pages, booktabs: 18) at 36 dpi: 165 tokens a page."""
    from longvlm import api

    out = tmp_path_factory.mktemp("small_pool") / "pool"
    api.pool(inputs=[str(pdf_dir / "float.pdf"), str(pdf_dir / "booktabs.pdf")], output=str(out), min_pages=0,
             max_pages=0, dpi=36, progress=False)
    return out


@pytest.fixture(scope="session")
def train_inputs(tmp_path_factory, qwen_tokenizer_dir) -> dict:
    """A tiny HF checkpoint (4 LM layers) and a copied-pages dataset whose packs differ in answer tokens
    (``tests/train_inputs.py``); run directories go into its ``tmp``."""
    from train_inputs import make_train_inputs

    return make_train_inputs(tmp_path_factory.mktemp("train"), qwen_tokenizer_dir)


@pytest.fixture(scope="module")
def megatron_single():
    """Megatron-Core's process groups for one process (module-wide); yields the device."""
    from megatron_vlm import runtime

    runtime.initialize_distributed(seed=1234)
    yield runtime.device()
    runtime.destroy()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster for the session (``tests/slurm_cluster.py``); ``SLURM_CONF`` points at it."""
    from slurm_cluster import SlurmCluster, missing_binaries

    missing = missing_binaries()
    if missing:
        pytest.skip(f"needs Debian's slurm-wlm and munge ({', '.join(missing)} not found): "
                    "apt-get install slurm-wlm munge (.ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster runs slurmd as root, and this is not root")
    with pytest.MonkeyPatch.context() as patch, SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        patch.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster
