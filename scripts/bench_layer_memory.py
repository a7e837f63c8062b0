"""Bytes autograd keeps per token for one transformer layer, against docs/model.md's hand count.

Builds one language-model layer (Qwen2.5-VL-7B's shapes by default) or one vision-tower layer with
this stack's spec, runs it forward on a packed stream (several samples; under context parallelism
each process holds its per-sample zig-zag part, K/V all-gathered), and reports the bytes of every
tensor autograd keeps for backward (by storage, parameters and the layer's input excluded: each
layer's input is the previous layer's output and is kept by this layer's first norm, so it is
counted here once), per local token, next to the hand count of ``launch/tune/memory.py``
(``layer_activation_bytes``) and their ratio. Processes: ``--cp N`` runs N of them (gloo).

    PYTHONPATH=. python scripts/bench_layer_memory.py                     # 7B LM + vision layers, fp32 and bf16, CP 1
    PYTHONPATH=. python scripts/bench_layer_memory.py --cp 8 --tokens 4096 # CP 8 (8 local processes)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# full recompute checkpoints whole layers in the block (the model-level test covers it), not inside a layer
RECOMPUTE = {"none": ("none", ()), "attn": ("selective", ("core_attn",)), "norm+act": ("selective", ("layernorm", "act")),
             "attn+norm+act": ("selective", ("core_attn", "layernorm", "act")), "mlp": ("selective", ("mlp",))}


def qwen25vl_7b() -> dict:
    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    return tiny_qwen25vl_config(num_layers=1, hidden_size=3584, intermediate_size=18944, num_heads=28, num_kv_heads=4,
                                mrope_section=(16, 24, 24), vision_depth=1, vision_hidden_size=1280,
                                vision_intermediate_size=3420, vision_heads=16, fullatt_block_indexes=()).to_dict()


def measure(part: str, dtype: str, tokens: int, samples: int, recompute: str) -> dict:
    """This process's measured and predicted bytes per local token (run under torchrun for CP)."""
    from megatron.core.transformer.spec_utils import build_module

    from launch.tune.measure import saved_storages
    from launch.tune.memory import Setup, layer_activation_bytes
    from megatron_vlm import runtime
    from megatron_vlm.models.attention import AttentionSegments
    from megatron_vlm.models.context_parallel import cp_split
    from megatron_vlm.models.qwen25vl.config import qwen25vl_config_from_hf
    from megatron_vlm.parallel import ParallelLayout

    cp = int(os.environ.get("WORLD_SIZE", "1"))
    layout = ParallelLayout(cp=cp)
    runtime.initialize_distributed(layout, seed=0)
    rank = torch.distributed.get_rank()
    mode, modules = RECOMPUTE[recompute]
    params_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    cfg = qwen25vl_config_from_hf(qwen25vl_7b(), layout=layout, params_dtype=params_dtype, recompute=mode,
                                  recompute_modules=modules)
    arch = cfg.arch
    if part == "language":
        config, causal = cfg.language, True
        heads, groups, head_dim, ffn, hidden = (arch.num_heads, arch.num_query_groups, arch.head_dim,
                                                arch.ffn_hidden_size, arch.hidden_size)
    else:
        config, causal = cfg.vision, False
        heads = groups = arch.vision_heads
        head_dim, ffn, hidden = arch.vision_head_dim, arch.vision_ffn_hidden_size, arch.vision_hidden_size
    layer = build_module(cfg.block_spec(1, causal=causal).layer_specs[0], config=config, layer_number=1)
    unit = 2 * cp
    tokens = -(-tokens // (64 * unit)) * 64 * unit
    base = tokens // samples // unit * unit - unit * samples
    lengths = [base + unit * k for k in range(samples - 1)]  # distinct lengths: one SDPA run each
    lengths.append(tokens - sum(lengths))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    if part == "vision":  # windows of 64 patches (Qwen2.5-VL's 112-pixel windows), one frame segment
        cu = torch.arange(0, tokens + 1, 64)
    split = cp_split(cu if part == "language" else None, tokens, cp if part == "language" else 1, rank)
    local = tokens // cp if part == "language" else tokens
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(local, 1, hidden, generator=g).to(params_dtype).requires_grad_()
    freqs = torch.randn(local, 1, 1, head_dim, generator=g)
    segments = AttentionSegments(cu_seqlens=cu, cp=split)
    excluded = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    kept = saved_storages(lambda: layer(x, attention_mask=None, rotary_pos_emb=freqs, packed_seq_params=segments),
                          excluded)
    measured = sum(s.nbytes() for s in kept.values())
    runs = len(lengths) * (2 if split is not None else 1) if part == "language" else 1
    predicted = layer_activation_bytes(
        hidden=hidden, heads=heads, groups=groups, head_dim=head_dim, ffn=ffn, tokens=local,
        key_tokens=tokens if split is not None else local, norm_tokens=local, runs=runs, recompute=mode,
        setup=Setup(precision=dtype), modules=modules)
    act = torch.tensor([], dtype=params_dtype).element_size()
    essential = must_keep(act=act, hidden=hidden, q=heads * head_dim, kv=groups * head_dim, ffn=ffn, heads=heads,
                          gathered=tokens / local if split is not None else 1)
    return {"part": part, "dtype": dtype, "cp": cp, "recompute": recompute, "local_tokens": local,
            "measured": measured / local / hidden, "predicted": predicted / local / hidden,
            "must_keep": essential / hidden}


def must_keep(*, act: int, hidden: int, q: int, kv: int, ffn: int, heads: int, gathered: float) -> float:
    """docs/model.md's hand count, per token, of what a layer without recompute must keep for backward:
    both norms' inputs and fp32 rstd; the inputs of linear_qkv and linear_fc1 (the norms' outputs), of
    linear_proj (the attention output) and of linear_fc2 (the SwiGLU's output); attention's Q, K, V (grouped;
    under the torch backend's CP, K/V of the whole stream: ``gathered`` = stream / local tokens) and its
    fp32 logsumexp; the SwiGLU's input. Independent of ``launch/tune/memory.py``."""
    norms = 2 * (act * hidden + 4)
    linear_inputs = act * (hidden + q + hidden + ffn)
    attention = act * (q + 2 * kv * gathered) + 4 * heads
    return norms + linear_inputs + attention + act * 2 * ffn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cp", type=int, default=1, help="context-parallel size (that many local processes)")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens of the packed stream (all CP ranks)")
    parser.add_argument("--samples", type=int, default=3, help="packed samples in the stream")
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--part", nargs="+", default=["language", "vision"], choices=["language", "vision"])
    parser.add_argument("--recompute", nargs="+", default=["none"], choices=list(RECOMPUTE))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        out = [measure(part, dtype, args.tokens, args.samples, recompute)
               for part in args.part for dtype in args.dtype for recompute in args.recompute
               if not (part == "vision" and int(os.environ.get("WORLD_SIZE", "1")) > 1)]
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(out))
        return
    with socket.socket() as sock:  # a free port for the processes' rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.cp}", "--master-addr=127.0.0.1",
           f"--master-port={port}",
           __file__, "--worker", "--tokens", str(args.tokens), "--samples", str(args.samples),
           "--dtype", *args.dtype, "--part", *args.part, "--recompute", *args.recompute]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LONGVLM_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"worker failed:\n{proc.stderr[-4000:]}")
    print("bytes autograd keeps per token per layer / hidden size: measured, the tuner's model of it\n"
          "(launch/tune/memory.py), and the hand count of what the layer must keep without recompute (docs/model.md)")
    print(f"{'part':<9}{'dtype':<6}{'CP':>3} {'recompute':<14}{'tokens/rank':>12}{'measured':>10}{'tuner':>8}"
          f"{'must keep':>10}{'measured/must keep':>20}")
    for r in json.loads(lines[0][7:]):
        ratio = f"{r['measured'] / r['must_keep']:>20.3f}" if r["recompute"] == "none" else ""
        print(f"{r['part']:<9}{r['dtype']:<6}{r['cp']:>3} {r['recompute']:<14}{r['local_tokens']:>12}"
              f"{r['measured']:>10.2f}{r['predicted']:>8.2f}{r['must_keep']:>10.2f}{ratio}")


if __name__ == "__main__":
    main()
