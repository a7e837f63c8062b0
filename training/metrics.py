"""What a run reports: a progress line per log interval, ``metrics.jsonl``, TensorBoard, a loss curve.

Only the first rank writes. ``metrics.jsonl`` has one object per step (``step``, ``loss``, ``lr``,
``grad_norm``, ``tokens``, ``step_time``, ``model_flops``, ``tflops_per_gpu``, ``mfu`` and more, see
docs/training.md) and one per validation pass
(``"split": "valid"``); it is appended to, so a resumed run continues the same file (steps after the
resumed checkpoint that a crash left behind are dropped first).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from megatron_vlm import runtime
from megatron_vlm.hardware import gpu_preset

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsLogger:
    """Progress lines, ``metrics.jsonl`` and TensorBoard events of one run (rank 0 only)."""

    def __init__(self, run_dir: str | Path, total_steps: int, *, enabled: bool, tensorboard: bool,
                 log_interval: int, resume_from: int = 0, world_size: int = 1, peak_flops: float | None = None,
                 device: str = "GPU"):
        """``peak_flops``: one GPU's dense peak FLOP/s (:func:`peak_flops`); ``None``: no MFU. ``device``: what one
        rank computes on, as the progress line names it (``GPU``, or ``process`` on CPUs)."""
        self.run_dir, self.total, self.enabled = Path(run_dir), total_steps, enabled
        self.device = device
        self.log_interval, self.world_size, self.peak_flops = log_interval, world_size, peak_flops
        self.path = self.run_dir / METRICS
        self.writer = None
        self.window: list[dict] = []
        self.start_step, self.start_time = resume_from, time.perf_counter()
        if not enabled:
            return
        self._truncate_after(resume_from)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_from + 1)

    def _truncate_after(self, step: int) -> None:
        """Drop the records of steps after ``step`` (a crash between two checkpoints left them)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def step(self, record: dict) -> None:
        """Record one optimizer step; print a progress line every ``log_interval`` steps. A record with
        ``model_flops`` (all ranks) and ``step_time`` gets ``tflops_per_gpu`` and, with a peak, ``mfu``."""
        if not self.enabled:
            return
        if record.get("model_flops"):
            per_gpu = record["model_flops"] / record["step_time"] / self.world_size
            record["tflops_per_gpu"] = per_gpu / 1e12
            if self.peak_flops:
                record["mfu"] = per_gpu / self.peak_flops
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "step_time", "data_wait", "mfu",
                        "padding_ratio", "tflops_per_gpu", "max_memory_gib"):
                if record.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", record[key], record["step"])
        self.window.append(record)
        if record["step"] % self.log_interval == 0 or record["step"] == self.total:
            print(self._line(), flush=True)
            self.window.clear()

    def _line(self) -> str:
        last = self.window[-1]
        n = len(self.window)
        step_time = sum(r["step_time"] for r in self.window) / n
        tokens_s = sum(r["tokens"] for r in self.window) / max(1e-9, sum(r["step_time"] for r in self.window))
        wait = sum(r["data_wait"] for r in self.window) / max(1e-9, sum(r["step_time"] for r in self.window))
        done = last["step"] - self.start_step
        eta = (time.perf_counter() - self.start_time) / max(1, done) * (self.total - last["step"])
        parts = [f"step {last['step']}/{self.total}", f"loss {last['loss']:.4f}", f"lr {last['lr']:.3g}",
                 f"grad {last['grad_norm']:.3g}" if last["grad_norm"] is not None else "grad -",
                 f"{tokens_s:,.0f} tok/s", f"{step_time:.2f} s/step", f"ETA {_hms(eta)}", f"data wait {wait:.1%}"]
        if last.get("mfu") is not None:
            parts.append(f"MFU {last['mfu']:.1%}")
        elif last.get("tflops_per_gpu") is not None:
            parts.append(f"{last['tflops_per_gpu']:.3g} TFLOP/s/{self.device}")
        if last.get("max_memory_gib") is not None:
            parts.append(f"peak mem {last['max_memory_gib']:.1f} GiB")
        if last.get("note"):
            parts.append(last["note"])
        return " | ".join(parts)

    def valid(self, step: int, metrics: dict) -> None:
        """Record one validation pass."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "split": "valid", **metrics}) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"valid/{key}", value, step)
        print(f"valid at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)

    def close(self) -> None:
        """Flush TensorBoard and draw the loss curve (``loss.png``) from ``metrics.jsonl``."""
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.close()
        plot_losses(self.path, self.run_dir / LOSS_PLOT)


def peak_flops(peak_tflops: float | None, precision: str) -> float | None:
    """One GPU's dense peak FLOP/s at ``precision``: ``peak_tflops`` when given, else the preset of this
    machine's GPU (``megatron_vlm.hardware``); ``None`` on a CPU or an unlisted GPU (no MFU then)."""
    if peak_tflops:
        return peak_tflops * 1e12
    if not runtime.use_cuda():
        return None
    spec = gpu_preset(torch.cuda.get_device_name())
    return (spec.peak_flops(precision) if spec is not None else 0.0) or None  # 0: no such precision (A100 fp8)


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(metrics_path: str | Path, out: str | Path) -> None:
    """Training loss per step (and validation loss where there is one) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path) if Path(metrics_path).exists() else []
    train = [r for r in records if r.get("split", "train") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    if not train:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=1.2)
    if valid:
        ax.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="valid", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
