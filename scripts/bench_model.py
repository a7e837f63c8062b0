"""Benchmark the ``torch`` attention backend and the Qwen25VLModel forward+backward on this machine.

Prints: (1) packed causal attention, per-segment SDPA vs one SDPA with a dense block-diagonal
mask; (2) vision window attention (many equal windows batched) vs a dense window mask; (3) a
small Qwen25VLModel forward+backward on a packed row with images. Each time is the CPU time of
this process per call (what the work costs, whatever else runs on the machine) and, in brackets,
the wall time (equal to it on an idle machine with OMP_NUM_THREADS=1).

    OMP_NUM_THREADS=1 python scripts/bench_model.py [--seq 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from alternate import alternate, versus

from megatron_vlm.models.attention import attention_plan, segmented_attention

VOCAB, IMAGE = 8192, 8000


class Timing:
    def __init__(self, cpu: float, wall: float):
        self.cpu, self.wall = cpu, wall

    def __str__(self) -> str:
        return f"{self.cpu * 1e3:.0f} ms CPU ({self.wall * 1e3:.0f} ms wall)"


def timed(fn, repeats: int, warm: bool = True) -> Timing:
    if warm:
        fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        fn()
    return Timing((time.process_time() - cpu) / repeats, (time.perf_counter() - wall) / repeats)


def dense_mask(cu: list[int], s: int, causal: bool) -> torch.Tensor:
    seg = torch.zeros(s, dtype=torch.long)
    for i, (a, e) in enumerate(zip(cu[:-1], cu[1:])):
        seg[a:e] = i
    mask = seg[:, None] == seg[None, :]
    if causal:
        mask &= torch.ones(s, s, dtype=torch.bool).tril()
    return mask


def bench_attention(name: str, cu: list[int], s: int, heads: int, dim: int, causal: bool, repeats: int) -> None:
    q, k, v = (torch.randn(1, heads, s, dim, requires_grad=True) for _ in range(3))
    plan = attention_plan(cu, 1, s, s, None, causal)
    mask = dense_mask(cu, s, causal)

    def ours():
        segmented_attention(q, k, v, plan, causal=causal).sum().backward()

    def dense():
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()

    ours(), dense()  # warm-up
    cpu, (low, high) = alternate({"ours": lambda: timed(ours, 1, warm=False).cpu,
                                  "dense": lambda: timed(dense, 1, warm=False).cpu}, repeats)
    print(f"{name}: {len(cu) - 1} segments, {heads} heads x {s} x {dim}, fwd+bwd (CPU time, {repeats} rounds in "
          f"turn, load {low:.1f}-{high:.1f}): per-segment {statistics.median(cpu['ours']) * 1e3:.0f} ms, dense mask "
          f"{statistics.median(cpu['dense']) * 1e3:.0f} ms: dense {versus(cpu['dense'], cpu['ours'])}")


def bench_model(repeats: int) -> None:
    from megatron_vlm import runtime
    from megatron_vlm.model_builder import build_vlm
    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    hf = tiny_qwen25vl_config(hidden_size=256, num_heads=4, num_kv_heads=2, mrope_section=(8, 12, 12),
                              intermediate_size=768, num_layers=8, vision_depth=8, vision_hidden_size=128,
                              vision_heads=4, vision_intermediate_size=384, fullatt_block_indexes=(3, 7),
                              vocab_size=VOCAB).to_dict()
    # a small vocabulary (the 151,936-way output layer would dominate on a CPU): move the image ids into it
    hf.update(image_token_id=IMAGE, vision_start_token_id=IMAGE + 1, vision_end_token_id=IMAGE + 2)
    model = build_vlm(hf, seed=0).model
    grids = torch.tensor([[1, 28, 20], [1, 16, 36], [1, 20, 28]])  # 392 x 280 px etc.: 140 + 144 + 140 tokens
    tokens_img = (grids.prod(1) // 4).tolist()
    ids = []
    for n in tokens_img:
        ids += torch.randint(0, 1000, (100,)).tolist() + [IMAGE + 1] + [IMAGE] * n + [IMAGE + 2]
    ids += torch.randint(0, 1000, (1024 - len(ids),)).tolist()
    ids = torch.tensor(ids)[None]
    pixels = torch.randn(int(grids.prod(1).sum()), 1176)
    cu = torch.tensor([0, 512, 1024])  # the boundary falls in the text between images 2 and 3
    labels = torch.randint(0, 1000, ids.shape)

    def step():
        model.zero_grad(set_to_none=True)
        model(ids, pixel_values=pixels, image_grid_thw=grids, cu_seqlens=cu, labels=labels).sum().backward()

    def vision():
        model.zero_grad(set_to_none=True)
        model.vision_model(pixels, grids).sum().backward()

    t, tv = timed(step, repeats), timed(vision, repeats)
    print(f"Qwen25VLModel (LM 8 x 256, vocab {VOCAB}, vision 8 x 128, 3 images = {int(grids.prod(1).sum())} "
          f"patches, seq 1024 packed 2 samples) fwd+bwd: {t}, of which vision tower {tv}")
    runtime.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    s = args.seq
    docs = [0, s // 8, s // 4, s // 2, 3 * s // 4, s]
    bench_attention("packed causal LM", docs, s, 4, 64, True, args.repeats)
    windows = list(range(0, s + 1, 256))  # 7B-like vision windows: 8 x 8 patches
    bench_attention("vision windows", windows, s, 4, 64, False, args.repeats)
    bench_model(args.repeats)


if __name__ == "__main__":
    main()
