"""Benchmark ``longvlm convert`` on a synthetic bf16 checkpoint with Qwen2.5-VL-7B's shapes.

Writes a random HF checkpoint with the 7B's config (hub layout) and tensor shapes but only
``--lm-layers`` language layers and ``--vision-layers`` vision blocks (the full 7B is ~16.6 GB; a
shared dev box cannot hold 1.5x of it), then runs ``hf-to-megatron`` and ``megatron-to-hf`` each in
its own process, sampling memory every 0.2 s. Run it at two depths to extrapolate linearly to 28/32
layers. Prints one line per conversion; ``--json`` for machine-readable output.

    python scripts/bench_convert.py --lm-layers 2 --vision-layers 2
    python scripts/bench_convert.py --lm-layers 6 --vision-layers 6
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QWEN25VL_7B_CONFIG = {  # the hub's config.json of Qwen/Qwen2.5-VL-7B-Instruct (transformers 4.x flat layout)
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
    "hidden_size": 3584, "image_token_id": 151655, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 128000, "max_window_layers": 28, "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "use_sliding_window": False, "video_token_id": 151656,
    "vision_end_token_id": 151653, "vision_start_token_id": 151652, "vision_token_id": 151654,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                      "temporal_patch_size": 2},
    "vocab_size": 152064,
}
SHARD_BYTES = 4 * 10**9


def model_bytes(config: dict) -> int:
    from checkpoint_tools.hf_io import expected_hf_shapes
    from megatron_vlm.models.qwen25vl.arch import Qwen25VLArch

    shapes = expected_hf_shapes(Qwen25VLArch.from_hf(config))
    return sum(torch.Size(s).numel() * 2 for s in shapes.values())


def write_synthetic(out: Path, config: dict) -> int:
    """A bf16 HF checkpoint with ``config``'s shapes, written tensor by tensor into 4 GB shards."""
    from checkpoint_tools.hf_io import ShardedSafetensorsWriter, expected_hf_shapes
    from megatron_vlm.models.qwen25vl.arch import Qwen25VLArch

    out.mkdir(parents=True)
    shapes = expected_hf_shapes(Qwen25VLArch.from_hf(config))
    writer = ShardedSafetensorsWriter(out, [(n, s, torch.bfloat16) for n, s in shapes.items()], SHARD_BYTES)
    gen = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        writer.add(name, (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16))
    writer.finish()
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return writer.total_size


def _rollup(pid: int) -> dict[str, int]:
    """``Pss``, ``Pss_Anon`` and ``Rss`` of a process in bytes (``/proc/PID/smaps_rollup``)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Pss_Anon"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def run_measured(argv: list[str], log: Path) -> dict:
    """Run a command and sample its process tree every 0.1 s: wall time, peak RSS of the main
    process, and the peaks of PSS summed over the tree (the forked checkpoint writers share pages
    with it; PSS counts a shared page once) in total and for anonymous memory only (the rest is
    page cache of the files read and written, which the kernel can reclaim)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak = {"rss": 0, "pss": 0, "pss_anon": 0}
    start = time.perf_counter()
    main = psutil.Process(proc.pid)
    while proc.poll() is None:
        totals = {"Pss": 0, "Pss_Anon": 0}
        try:
            tree = [main, *main.children(recursive=True)]
            peak["rss"] = max(peak["rss"], _rollup(main.pid)["Rss"])
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            break
        for p in tree:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, KeyError):
                r = _rollup(p.pid)
                totals["Pss"] += r["Pss"]
                totals["Pss_Anon"] += r["Pss_Anon"]
        peak["pss"] = max(peak["pss"], totals["Pss"])
        peak["pss_anon"] = max(peak["pss_anon"], totals["Pss_Anon"])
        time.sleep(0.1)
    proc.wait()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{log.read_text()[-3000:]}")
    return {"seconds": seconds, "peak_rss": peak["rss"], "peak_tree_pss": peak["pss"],
            "peak_tree_pss_anon": peak["pss_anon"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm-layers", type=int, default=4, help="language layers (the 7B has 28)")
    parser.add_argument("--vision-layers", type=int, default=4, help="vision blocks (the 7B has 32)")
    parser.add_argument("--workdir", default="/tmp/longvlm_bench_convert")
    parser.add_argument("--tp", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic and converted checkpoints")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = json.loads(json.dumps(QWEN25VL_7B_CONFIG))
    config["num_hidden_layers"], config["max_window_layers"] = args.lm_layers, args.lm_layers
    config["vision_config"]["depth"] = args.vision_layers
    config["vision_config"]["fullatt_block_indexes"] = [i for i in (7, 15, 23, 31) if i < args.vision_layers]
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    hf, meg, back = work / "hf", work / "megatron", work / "hf_out"
    t0 = time.perf_counter()
    nbytes = write_synthetic(hf, config)
    gen_s = time.perf_counter() - t0
    cli = [sys.executable, "-W", "ignore", "-m", "longvlm.cli", "convert"]
    runs = {
        "hf-to-megatron": run_measured(cli + ["hf-to-megatron", "--hf", str(hf), "--out", str(meg),
                                              "--tp", str(args.tp)], work / "import.log"),
        "megatron-to-hf": run_measured(cli + ["megatron-to-hf", "--ckpt", str(meg), "--out", str(back)],
                                       work / "export.log"),
    }
    report = {"lm_layers": args.lm_layers, "vision_layers": args.vision_layers, "checkpoint_bytes": nbytes,
              "full_7b_bytes": model_bytes(QWEN25VL_7B_CONFIG), "generate_seconds": gen_s, "runs": runs}
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
        return
    print(f"synthetic Qwen2.5-VL-7B shapes, {args.lm_layers} LM layers + {args.vision_layers} vision blocks: "
          f"{nbytes / 1e9:.2f} GB bf16 (full 7B: {report['full_7b_bytes'] / 1e9:.2f} GB); generated in {gen_s:.0f} s")
    for name, r in runs.items():
        print(f"  {name:15s} {r['seconds']:6.1f} s  main RSS {r['peak_rss'] / 1e9:5.2f} GB "
              f"({r['peak_rss'] / nbytes:.2f}x)  tree PSS {r['peak_tree_pss'] / 1e9:5.2f} GB "
              f"({r['peak_tree_pss'] / nbytes:.2f}x)  tree anonymous PSS {r['peak_tree_pss_anon'] / 1e9:5.2f} GB "
              f"({r['peak_tree_pss_anon'] / nbytes:.2f}x)")


if __name__ == "__main__":
    main()
