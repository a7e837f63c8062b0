"""Peak memory and time of Qwen25VLModel's loss forward+backward with and without ``loss_mask``.

The tiny model has Qwen's real 151,936-token vocabulary, so the output layer's logits dominate, as
in the 7B at 128K tokens. Each variant runs in a fresh process (peak RSS is per process); the two
variants alternate for ``--rounds`` rounds, and the time is reported as the median of the rounds' ratios.

    OMP_NUM_THREADS=2 python scripts/bench_loss_mask.py [--seq 1024] [--answer 32] [--repeats 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time

from alternate import alternate, versus


def run(seq: int, answer: int, masked: bool, repeats: int) -> tuple[float, float]:
    """(peak RSS in GB, seconds per forward+backward) of one variant, in this process."""
    import torch

    from megatron_vlm import runtime
    from megatron_vlm.model_builder import build_vlm
    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    model = build_vlm(tiny_qwen25vl_config().to_dict(), seed=1).model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (1, seq), generator=g)
    labels = torch.randint(0, 1000, (1, seq), generator=g)
    mask = torch.zeros_like(labels)
    mask[:, -answer:] = 1  # the answer at the end of the row

    def step():
        loss = model(ids, labels=labels, loss_mask=mask if masked else None)
        (loss * mask).sum().backward()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - start) / repeats
    runtime.destroy()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--answer", type=int, default=32, help="tokens with loss_mask = 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="times the two variants alternate")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    peaks: dict[bool, list[float]] = {False: [], True: []}

    def variant(masked: bool) -> float:
        with ctx.Pool(1) as pool:
            peak, seconds = pool.apply(run, (args.seq, args.answer, masked, args.repeats))
        peaks[masked].append(peak)
        return seconds

    times, (low, high) = alternate({False: lambda: variant(False), True: lambda: variant(True)}, args.rounds)
    print(f"seq {args.seq}, {args.answer} answer tokens; {args.rounds} rounds of the two variants in turn, "
          f"load average {low:.1f}-{high:.1f}")
    for masked in (False, True):
        print(f"  loss_mask {'on ' if masked else 'off'}: peak RSS {statistics.median(peaks[masked]):.2f} GB, "
              f"fwd+bwd {statistics.median(times[masked]) * 1e3:.0f} ms" +
              (f"  vs off: {versus(times[True], times[False])}" if masked else ""))

if __name__ == "__main__":
    main()
