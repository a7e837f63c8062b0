"""Training benchmarks (figures in docs/benchmarks.md), on real built rows of the demo PDFs; all on CPU but `gpu`.

    python scripts/bench_train.py overhead     # longvlm train vs a bare fwd+bwd+AdamW step, same model and rows
    python scripts/bench_train.py data-wait    # share of the step spent waiting for the loader at 128K rows
    python scripts/bench_train.py checkpoint   # save / load time and size, tiny and ~100M configs
    python scripts/bench_train.py data-path    # decode CPU and host memory per rank: TP1 vs TP2 x CP2
    python scripts/bench_train.py padding      # computed / real tokens of micro-batches: sizes 1, 2, 4 x layouts
    python scripts/bench_train.py gpu          # one GPU: tokens/s, TFLOP/s, MFU, peak memory (tiny, 1b; 8K, 32K),
                                               # for every layer combination that runs there (TE linears/attention, FP8)

Inputs (pools, datasets, checkpoints) are made once under --work (default /tmp/longvlm-bench).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

from alternate import alternate, versus  # noqa: E402
from bench_inputs import make_dataset, make_model, make_pool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def train_run(work: Path, name: str, model: Path, data: Path, steps: int, **extra) -> list[dict]:
    """``longvlm train`` (one process) on ``data``; the records of metrics.jsonl."""
    from training.config import load_recipe
    from training.metrics import read_metrics
    from training.trainer import train

    run_dir = work / "runs" / name
    overrides = {"model.checkpoint": model, "train.train_steps": steps, "train.global_batch_size": 1,
                 "train.micro_batch_size": 1, "train.precision": "fp32", "optimizer.warmup_fraction": 0.0,
                 "checkpoint.save_interval": 0, "logging.tensorboard": False, "logging.log_interval": 1, **extra}
    config = load_recipe(REPO / "training/recipes/tiny-cpu.yaml",
                         [f"data.train=[{{prefix: {data}}}]"] + [f"{k}={v}" for k, v in overrides.items()])
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    train(config, run_dir)
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split", "train") == "train"]


def bare_steps(model_dir: Path, data: Path, steps: int, workers: int) -> list[float]:
    """The same model, rows and loss with nothing around them: fwd, bwd, AdamW step (seconds each), the
    batches read from the same loader (same workers) inside the timed step, as the trainer reads them."""
    import torch

    from megatron_vlm import runtime
    from megatron_vlm.data.loader import build_data_loader, stop_workers
    from megatron_vlm.model_builder import build_vlm

    model = build_vlm(model_dir, seed=1234).model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    batches = iter(build_data_loader(data, 1, seed=1234, total_samples=steps, num_workers=workers))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = model(batch["input_ids"], position_ids=batch["position_ids"], pixel_values=batch["pixel_values"],
                     image_grid_thw=batch["image_grid_thw"], cu_seqlens=batch["cu_seqlens"],
                     cu_seqlens_padded=batch["cu_seqlens_padded"], labels=batch["labels"], loss_mask=batch["loss_mask"])
        (loss.sum() / batch["loss_mask"].sum()).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    stop_workers(batches)
    runtime.destroy()
    return times


def loader_cpu(data: Path, steps: int) -> float:
    """CPU seconds the loader spends per micro-batch (read, decode, patch, collate), in this process."""
    from megatron_vlm.data.loader import build_data_loader

    start = time.process_time()
    for _ in build_data_loader(data, 1, seed=1234, total_samples=steps, num_workers=0):
        pass
    return (time.process_time() - start) / steps


def overhead(args) -> None:
    """``longvlm train`` against a bare loop, A and B alternated ``--rounds`` times over the same rows (the same
    seeded order, one loader worker on both sides, batches read inside the step on both sides); the trainer
    with and without gradient clipping, to say where the time goes. Per round: median step time of steps 3..N
    of each side; reported: the median of the rounds' ratios, their spread, and the machine's load."""
    pool = make_pool(args.work / f"pool{args.dpi}", args.dpi)
    data = make_dataset(pool, args.work / f"data{args.dpi}-{args.seq}", args.seq, 4e5)
    model = make_model(args.work / "models" / args.size, args.size)
    steps, skip = args.steps, 2  # the first steps warm up allocators and caches
    sides = {"bare fwd+bwd+AdamW": lambda: bare_steps(model, data, steps, 1),
             "longvlm train, clip 0": lambda: [r["step_time"] for r in train_run(
                 args.work, "overhead", model, data, steps, **{"data.num_workers": 1, "optimizer.clip_grad": 0.0})],
             "longvlm train": lambda: [r["step_time"] for r in train_run(
                 args.work, "overhead", model, data, steps, **{"data.num_workers": 1})]}
    medians, (low, high) = alternate({name: lambda run=run: statistics.median(run()[skip:])
                                      for name, run in sides.items()}, args.rounds)
    bare = medians["bare fwd+bwd+AdamW"]
    tokens = statistics.median(r["tokens"] for r in train_run(args.work, "overhead", model, data, 1))
    print(f"model {args.size}, rows of ~{tokens:,.0f} tokens ({args.dpi} dpi); {args.rounds} rounds of the three "
          f"sides in turn, median of steps {skip + 1}..{steps} each; load average {low:.1f}-{high:.1f}")
    for name, values in medians.items():
        print(f"  {name:24s} {statistics.median(values):7.3f} s/step" +
              (f"  vs bare: {versus(values, bare)}" if values is not bare else ""))
    cpu = loader_cpu(data, steps)
    print(f"  the loader's CPU per micro-batch (one process, no workers): {cpu:.3f} s "
          f"({cpu / statistics.median(bare):.1%} of a bare step; its worker shares the machine's cores)")


def data_wait(args) -> None:
    pool = make_pool(args.work / "pool144", 144)
    data = make_dataset(pool, args.work / "data144-131072", 131072, 1.2e6)
    model = make_model(args.work / "models" / "tiny", "tiny")
    recs = train_run(args.work, "data-wait", model, data, args.steps,
                     **{"data.num_workers": args.workers, "data.prefetch": 2, "model.rope.target_length": 131072})
    skip = 1  # the first batch has nothing to overlap with
    wait = sum(r["data_wait"] for r in recs[skip:]) / sum(r["step_time"] for r in recs[skip:])
    print(f"tiny model, rows of {statistics.mean(r['tokens'] for r in recs):,.0f} tokens (144 dpi, <= 131,072), "
          f"{args.workers} loader workers, steps {skip + 1}..{args.steps}: step {statistics.median(r['step_time'] for r in recs[skip:]):.1f} s, "
          f"data wait {wait:.2%} of the step")


def checkpoint(args) -> None:
    """Save and load of a whole training checkpoint (model + optimizer + state) in one process."""
    import shutil

    pool = make_pool(args.work / f"pool{args.dpi}", args.dpi)
    data = make_dataset(pool, args.work / f"data{args.dpi}-{args.seq}", args.seq, 4e5)
    for size in ("tiny", "100m"):
        model = make_model(args.work / "models" / size, size)
        recs = train_run(args.work, f"ckpt-{size}", model, data, 1, **{"data.num_workers": 0})
        run = args.work / "runs" / f"ckpt-{size}"
        iter_dir = run / "checkpoints" / "iter_0000001"
        size_bytes = sum(f.stat().st_size for f in iter_dir.rglob("*") if f.is_file())
        # time a save and a load with the trainer's own Checkpointer on the trained model
        out = subprocess.run([sys.executable, __file__, "_checkpoint_io", str(run), size], capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        save_s, load_s = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{size}: checkpoint {size_bytes / 1e6:,.1f} MB (model + Adam state + training state); "
              f"save {save_s:.2f} s, load {load_s:.2f} s (step {recs[0]['step_time']:.1f} s)")
        shutil.rmtree(run)


def _checkpoint_io(run: str, size: str) -> None:
    from training.checkpoint import Checkpointer
    from training.config import load_recipe
    from training.model import build_model
    from training.optimizer import build_optimizer, build_scheduler
    from training.run_dir import start_point

    config = load_recipe(Path(run) / "config.yaml")
    parts = build_model(config, start_point(config).arch)
    optimizer = build_optimizer(config.optimizer, parts, "fp32")
    scheduler = build_scheduler(config.optimizer, optimizer, 10)
    ckpt = Checkpointer(run, parts, optimizer, scheduler, keep_last=5, async_save=False)
    start = time.perf_counter()
    state = ckpt.load({"parallel": {}, "world_size": 1})
    load_s = time.perf_counter() - start
    state.iteration += 1
    start = time.perf_counter()
    ckpt.save(state)
    save_s = time.perf_counter() - start
    print(json.dumps([save_s, load_s]))


def data_path(args) -> None:
    """Each rank's loader work for the same micro-batches: TP1 (one rank decodes every page) vs the four
    ranks of TP2 x CP2 (each a quarter); decode CPU seconds and peak RSS per rank, separate processes."""
    pool = make_pool(args.work / "pool144", 144)
    data = make_dataset(pool, args.work / "data144-32768", 32768, 6e5)
    shares = {"TP1": (1, 0, 1, 0)}
    shares.update({f"TP2xCP2 rank tp{t}cp{c}": (2, c, 2, t) for c in range(2) for t in range(2)})
    for name, share in shares.items():
        out = subprocess.run([sys.executable, __file__, "_load", str(data), str(args.batches), *map(str, share)],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        cpu, rss, pixels, images = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:22s} decodes {images:4d} pages, {pixels / 1e9:5.2f} GB of patches; loader CPU {cpu:6.2f} s; "
              f"peak RSS {rss / 1e6:,.0f} MB")


def _load(data: str, batches: str, cp_size: str, cp_rank: str, tp_size: str, tp_rank: str) -> None:
    from megatron_vlm.data.image_share import ImageShare
    from megatron_vlm.data.loader import build_data_loader

    share = ImageShare(cp_size=int(cp_size), cp_rank=int(cp_rank), tp_size=int(tp_size), tp_rank=int(tp_rank))
    start = time.process_time()
    pixels = images = 0
    for batch in build_data_loader(data, 1, seed=0, total_samples=int(batches), num_workers=0, share=share):
        pixels += batch["pixel_values"].numel() * 4
        images += int(batch["pixel_range"][1] - batch["pixel_range"][0])
    cpu = time.process_time() - start
    print(json.dumps([cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, pixels, images]))


def padding(args) -> None:
    """Computed / real tokens of the micro-batches of a built dataset (no pages decoded: collation only), at
    micro-batch sizes 1, 2 and 4 for several layouts: samples padded for CP, streams for SP / FP8, and the
    interleaved schedule's fixed length (``training.data.fixed_length``)."""
    from megatron_vlm.data.collate import collate_packs
    from megatron_vlm.data.dataset import BuiltDataset
    from megatron_vlm.formats.dataset import max_samples_per_pack, open_dataset
    from megatron_vlm.parallel import ParallelLayout

    pool = make_pool(args.work / "pool144", 144)
    data = make_dataset(pool, args.work / f"data144-{args.seq}", args.seq, 6e5 * args.seq / 8192)
    ds = BuiltDataset(data, decode_images=False)
    items = [ds.item(i) for i in range(len(ds))]
    longest = max(len(it["input_ids"]) for it in items)
    most = max_samples_per_pack(data, open_dataset(data))
    layouts = {"TP1": (ParallelLayout(), False), "TP2+SP": (ParallelLayout(tp=2, sp=True), False),
               "CP2": (ParallelLayout(cp=2), False), "TP2xCP2+SP": (ParallelLayout(tp=2, cp=2, sp=True), False),
               "CP8": (ParallelLayout(cp=8), False), "TP4xCP8+SP fp8": (ParallelLayout(tp=4, cp=8, sp=True), True),
               "PP2 VPP2": (ParallelLayout(pp=2, vpp=2), False)}
    print(f"{data.name}: {len(items)} rows, {sum(len(it['cu_seqlens']) - 1 for it in items)} samples, "
          f"longest row {longest:,} tokens; computed / real tokens over all micro-batches")
    print(f"{'layout':<16}" + "".join(f"{'MB ' + str(mb):>9}" for mb in (1, 2, 4)))
    for name, (layout, fp8) in layouts.items():
        pad = layout.token_padding(fp8=fp8)
        cells = []
        for mb in (1, 2, 4):
            fixed = None
            if layout.vpp:  # training.data.fixed_length with train.seq_length = the longest row
                bound = mb * (longest + most * (pad.sample - 1))
                fixed = -(-bound // pad.stream) * pad.stream
            computed = real = 0
            for k in range(0, len(items) - mb + 1, mb):
                batch = collate_packs(items[k:k + mb], pad, fixed)
                computed += batch["input_ids"].numel()
                real += int(batch["real_tokens"])
            cells.append(computed / real)
        print(f"{name:<16}" + "".join(f"{c:>9.3f}" for c in cells))


def gpu(args) -> None:
    """``longvlm train`` on one GPU (Megatron's distributed optimizer, mixed precision) on real rows of 144-dpi
    pages: throughput, model TFLOP/s, MFU against the GPU's preset and peak memory, for every combination of
    linears, core attention and precision this machine runs (Transformer Engine's only where it imports;
    FP8 only on a GPU that has it)."""
    import torch

    from megatron_vlm.runtime.transformer_engine import transformer_engine_error, transformer_engine_version

    if not torch.cuda.is_available():
        sys.exit("gpu: needs a CUDA GPU")
    os.environ["LONGVLM_DEVICE"] = "cuda"
    combos = [("local", "torch", "bf16")]
    te_problem = transformer_engine_error()
    if te_problem is None:
        combos += [("te", "torch", "bf16"), ("local", "te", "bf16"), ("te", "te", "bf16")]
        if torch.cuda.get_device_capability() >= (8, 9):
            combos += [("te", "torch", "fp8"), ("te", "te", "fp8")]
    pool = make_pool(args.work / "pool144", 144)
    print(f"{torch.cuda.get_device_name()}, driver {torch.cuda.driver_version() if hasattr(torch.cuda, 'driver_version') else '?'}, "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, Transformer Engine "
          f"{transformer_engine_version() or 'not installed'}{f' ({te_problem})' if te_problem else ''}; "
          f"median of steps 3..{args.steps}; one process")
    for size in args.sizes.split(","):
        model = make_model(args.work / "models" / size, size)
        for seq in (8192, 32768):
            data = make_dataset(pool, args.work / f"data144-{seq}", seq, 3e5 * seq / 8192)
            for impl, attention, precision in combos:
                recs = train_run(args.work, f"gpu-{size}-{seq}-{impl}-{attention}-{precision}", model, data,
                                 args.steps, **{"train.precision": precision, "data.num_workers": 2,
                                                "train.seq_length": seq, "model.transformer_impl": impl,
                                                "model.attention_backend": attention})[2:]
                med = {k: statistics.median(r[k] for r in recs) for k in ("tokens_per_s", "tflops_per_gpu", "step_time")}
                mfu = statistics.median(r["mfu"] for r in recs) if all("mfu" in r for r in recs) else float("nan")
                memory = max(r["max_memory_gib"] for r in recs)
                print(f"  {size:5s} {seq // 1024:3d}K {impl:5s} linears {attention:5s} attention {precision:4s}: "
                      f"{med['tokens_per_s']:9,.0f} tokens/s/GPU {med['tflops_per_gpu']:6.1f} TFLOP/s  MFU {mfu:6.1%}  "
                      f"peak memory {memory:5.1f} GiB ({med['step_time']:.3f} s/step)", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):  # a measurement in its own process
        {"_load": _load, "_checkpoint_io": _checkpoint_io}[sys.argv[1]](*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", choices=["overhead", "data-wait", "checkpoint", "data-path", "padding", "gpu"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/longvlm-bench"))
    parser.add_argument("--size", default="small", help="overhead: model size (tiny, small, 100m, 1b)")
    parser.add_argument("--dpi", type=int, default=72, help="overhead/checkpoint: page resolution of the pool")
    parser.add_argument("--seq", type=int, default=8192, help="overhead/checkpoint: longest row")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="overhead: times the sides alternate")
    parser.add_argument("--workers", type=int, default=2, help="data-wait: loader processes")
    parser.add_argument("--batches", type=int, default=4, help="data-path: micro-batches per rank")
    parser.add_argument("--sizes", default="tiny,1b", help="gpu: model sizes")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    {"overhead": overhead, "data-wait": data_wait, "checkpoint": checkpoint, "data-path": data_path,
     "padding": padding, "gpu": gpu}[args.bench](args)


if __name__ == "__main__":
    main()
