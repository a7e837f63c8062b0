"""``longvlm tune``'s cost model against real CPU training steps: activations, peak memory, step time.

For each sequence length and recompute mode, in a fresh process with one thread: measure this CPU
(``launch.tune.calibrate``: matmul and attention FLOP/s, memory bandwidth: the "GPU" preset of
``--gpu cpu``), then build Qwen25VLModel (fp32, TP = PP = CP = 1) under Megatron DDP + Adam and run
training steps on a packed row of two samples, half of it page images
(``launch.tune.measure``), and print what the model predicts next to what was measured:

- saved: bytes autograd keeps for backward;
- peak: peak bytes allocated during forward + backward above the model states;
- step: CPU seconds of a whole step (forward, backward, gradient sync, Adam), median of --repeats.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/bench_tune.py [--seq 512 1024 2048] [--recompute none full]
"""

from __future__ import annotations

import argparse
import multiprocessing

# LM 4 x 512 (8 heads, 2 KV groups, SwiGLU 1408), vision 4 x 256 (4 heads, SwiGLU 640); a 32,768-token
# vocabulary keeps the 7B's proportions (vocabulary / hidden 64 here, 42 in the 7B; 297 with Qwen's 151,936)
MODEL = dict(hidden_size=512, num_heads=8, num_kv_heads=2, mrope_section=(8, 12, 12), intermediate_size=1408,
             num_layers=4, vision_depth=4, vision_hidden_size=256, vision_heads=4, vision_intermediate_size=640,
             fullatt_block_indexes=(1, 3), vocab_size=32768)
VISION_IDS = dict(vision_start_token_id=32000, image_token_id=32001, vision_end_token_id=32002)
IMAGE = (1, 16, 24)  # 96 LLM tokens per image


def row_for(seq: int):
    """Two samples of seq/2 tokens, each about half page images, 32 answer tokens each."""
    from launch.tune.workload import Row

    per_sample = max(1, seq // 2 // 2 // (IMAGE[1] * IMAGE[2] // 4 + 2))
    return Row((seq // 2, seq - seq // 2), (IMAGE,) * (2 * per_sample), 64)


def run(seq: int, recompute: str, repeats: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from launch.tune.calibrate import cpu_preset
    from launch.tune.layout import Layout
    from launch.tune.measure import measure_step, row_batch
    from launch.tune.memory import Setup, activations, transient_bytes
    from launch.tune.timing import estimate_time
    from megatron_vlm import runtime
    from megatron_vlm.flops import model_flops
    from megatron_vlm.model_builder import build_vlm
    from megatron_vlm.models.qwen25vl.tiny import tiny_qwen25vl_config

    gpu, eff = cpu_preset()
    hf = tiny_qwen25vl_config(**MODEL).to_dict()
    hf.update(VISION_IDS)
    built = build_vlm(hf, seed=0, recompute=recompute)
    arch, row = built.config.arch, row_for(seq)
    got = measure_step(built.model, row_batch(row, arch), repeats=repeats)
    runtime.destroy()
    setup = Setup(precision="fp32", distributed_optimizer=False, overlap_grad_reduce=False)
    layout = Layout.make(recompute=recompute)
    acts = activations(arch, layout, setup, row, 0)
    kept = acts.total - acts.inputs
    flops = model_flops(arch, row.segments, row.image_grids, row.answer_tokens)
    time = estimate_time(arch, layout, setup, row, flops, global_batch=1, gpu=gpu, gpus_per_node=1, eff=eff)
    return dict(seq=seq, recompute=recompute, images=len(row.image_grids), saved=got.saved, saved_pred=kept,
                peak=got.peak, peak_pred=kept + transient_bytes(arch, layout, setup, row, 0),
                step=got.seconds, step_pred=time.step, step_times=got.step_times, parts=time.parts,
                gemm_gflops=gpu.fp32_tflops * 1e3, attention_gflops=gpu.fp32_tflops * 1e3 * eff.attention,
                bandwidth_gbps=gpu.hbm_gbps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--recompute", nargs="+", default=["none", "selective", "full"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    print(f"{'seq':>5} {'recompute':<10}{'saved MB meas/pred':>22}{'err':>7}{'peak MB meas/pred':>22}{'err':>7}"
          f"{'step CPU-s meas/pred':>24}{'err':>7}   calibration (GFLOP/s matmul, attention; GB/s)")
    for seq in args.seq:
        for recompute in args.recompute:
            with ctx.Pool(1) as pool:
                r = pool.apply(run, (seq, recompute, args.repeats))
            mb = 2 ** 20
            print(f"{r['seq']:>5} {r['recompute']:<10}{r['saved'] / mb:>11.1f} /{r['saved_pred'] / mb:>8.1f}"
                  f"{r['saved_pred'] / r['saved'] - 1:>+7.1%}{r['peak'] / mb:>11.1f} /{r['peak_pred'] / mb:>8.1f}"
                  f"{r['peak_pred'] / r['peak'] - 1:>+7.1%}{r['step']:>13.2f} /{r['step_pred']:>8.2f}"
                  f"{r['step_pred'] / r['step'] - 1:>+7.1%}   {r['gemm_gflops']:.1f}, {r['attention_gflops']:.1f}; "
                  f"{r['bandwidth_gbps']:.1f}  (steps {', '.join(f'{t:.2f}' for t in r['step_times'])})",
                  flush=True)


if __name__ == "__main__":
    main()
