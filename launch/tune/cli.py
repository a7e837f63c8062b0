"""``longvlm tune``: rank the parallel layouts of a Qwen2.5-VL training run by predicted speed.

    longvlm tune --model qwen2.5-vl-7b --seq-len 131072 --gpus 64 --gpus-per-node 8 --gpu h100 \\
        --global-batch 32 [--data DATA_PREFIX] [--explain 1] [--json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from launch.tune.layout import RECOMPUTE_MODES
from launch.tune.memory import PRECISIONS
from launch.tune.presets import GPUS, MODELS
from megatron_vlm.errors import ConfigError, LongVLMError
from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args

GPU_CHOICES = (*GPUS, "cpu")


@dataclass
class TuneConfig:
    model: str = field(metadata={
        "metavar": "MODEL", "help": f"a preset ({', '.join(MODELS)}), a Hugging Face checkpoint directory or "
        "config.json, or a Megatron checkpoint written by 'longvlm convert' or training"})
    gpus: int = field(metadata={"help": "GPUs in the job"})
    seq_len: int = field(default=131072, metadata={"help": "tokens per packed training row"})
    global_batch: int | None = field(default=None, metadata={
        "metavar": "ROWS", "help": "rows of --seq-len per optimizer step (or give --global-batch-tokens)"})
    global_batch_tokens: int | None = field(default=None, metadata={
        "metavar": "TOKENS", "help": "tokens per optimizer step, rounded down to whole rows"})
    gpus_per_node: int = field(default=8, metadata={"help": "GPUs per node (NVLink domain)"})
    gpu: str = field(default="h100", metadata={
        "choices": GPU_CHOICES, "help": "GPU preset (docs/tune.md lists the figures); 'cpu' measures this machine"})
    gpu_memory_gib: float | None = field(default=None, metadata={"help": "override: device memory (GiB)"})
    peak_tflops: float | None = field(default=None, metadata={"help": "override: dense bf16 matmul peak (TFLOP/s)"})
    fp8_tflops: float | None = field(default=None, metadata={"help": "override: dense fp8 matmul peak (TFLOP/s)"})
    hbm_gbps: float | None = field(default=None, metadata={"help": "override: device memory bandwidth (GB/s)"})
    nvlink_gbps: float | None = field(default=None, metadata={
        "help": "override: GPU-to-GPU bandwidth inside a node, per direction (GB/s)"})
    network_gbps: float | None = field(default=None, metadata={
        "help": "override: bandwidth between nodes per GPU, per direction (GB/s)"})
    host_memory_gib: float | None = field(default=None, metadata={"help": "override: CPU memory per node (GiB)"})
    precision: str | None = field(default=None, metadata={
        "choices": PRECISIONS, "help": "training precision (default: bf16; fp32 with --gpu cpu); fp8 needs "
        "--attention-backend te"})
    attention_backend: str = field(default="torch", metadata={
        "choices": ("torch", "te"), "help": "the model's attention backend (docs/model.md); te cannot run packed "
        "rows with CP > 1"})
    distributed_optimizer: bool = field(default=True, metadata={
        "help": "Megatron's distributed optimizer (optimizer state sharded over DP x CP)"})
    data: str | None = field(default=None, metadata={
        "metavar": "DATA_PREFIX", "help": "plan for the rows of a built dataset (longvlm build) instead of "
        "synthetic rows: real sample lengths, page images and answer tokens"})
    sample_tokens: int | None = field(default=None, metadata={
        "help": "synthetic rows: tokens per packed sample (default: one sample per row)"})
    dpi: float = field(default=144.0, metadata={"help": "synthetic rows: page render resolution (A4 pages)"})
    image_share: float = field(default=0.9, metadata={"help": "synthetic rows: share of tokens that are page images"})
    answer_tokens: int = field(default=1024, metadata={"help": "synthetic rows: loss (answer) tokens per row"})
    micro_batch: list[int] = field(default_factory=lambda: [1, 2], metadata={
        "help": "micro-batch sizes (rows) to consider"})
    recompute: list[str] = field(default_factory=lambda: list(RECOMPUTE_MODES), metadata={
        "choices": RECOMPUTE_MODES, "help": "activation recompute modes to consider"})
    tp: list[int] | None = field(default=None, metadata={"help": "only these tensor-parallel sizes"})
    pp: list[int] | None = field(default=None, metadata={"help": "only these pipeline-parallel sizes"})
    cp: list[int] | None = field(default=None, metadata={"help": "only these context-parallel sizes"})
    fragmentation: float = field(default=0.10, metadata={
        "help": "allocator fragmentation allowance, as a fraction of activations"})
    reserved_gib: float = field(default=3.0, metadata={"help": "per-GPU memory for CUDA context, NCCL, workspaces"})
    gemm_efficiency: float = field(default=0.70, metadata={"help": "achieved fraction of the matmul peak"})
    attention_efficiency: float = field(default=0.45, metadata={
        "help": "achieved fraction of the bf16 peak in attention"})
    loader_workers: int | None = field(default=None, metadata={
        "help": "data loader workers per GPU process (default: the loader's)"})
    prefetch_factor: int | None = field(default=None, metadata={"help": "micro-batches each loader worker prefetches"})
    top: int = field(default=10, metadata={"help": "layouts to show"})
    explain: int | None = field(default=None, metadata={
        "metavar": "RANK", "help": "break down the layout ranked RANK (1 = fastest): memory per stage, time per part"})
    json: bool = field(default=False, metadata={"help": "print the ranked layouts as JSON"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Rank the parallel layouts (TP, PP, CP, DP, SP, micro-batch, recompute, first-stage "
                          "layers) of a Qwen2.5-VL training run by predicted step time, with predicted peak memory "
                          "per GPU. The cost model knows the VLM: vision tower on the first pipeline stage, images "
                          "split over CP ranks, answer-only logits, attention at the packed samples' real lengths "
                          "(docs/tune.md).")
    add_dataclass_arguments(parser, TuneConfig)


def load_model_config(model: str) -> dict:
    """The Hugging Face config dict of ``--model``: a preset name, an HF checkpoint/config.json, or a
    Megatron checkpoint (its ``longvlm.json``)."""
    from megatron_vlm.formats.checkpoint import TRACKER_NAME, MegatronCheckpoint
    from megatron_vlm.models.config import load_hf_config

    if model in MODELS:
        return MODELS[model]
    path = Path(model)
    if (path / TRACKER_NAME).is_file():
        return MegatronCheckpoint.open(path).meta["hf_config"]
    if path.is_file() or (path / "config.json").is_file():
        try:
            return load_hf_config(path)
        except ValueError as err:
            raise ConfigError(f"--model {model}: {err}") from None
    raise ConfigError(f"--model {model}: not a preset ({', '.join(MODELS)}), a Hugging Face checkpoint "
                      f"(no config.json) or a Megatron checkpoint (no {TRACKER_NAME})")


def _check(config: TuneConfig) -> None:
    for name in ("gpus", "gpus_per_node", "seq_len", "top"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if (config.global_batch is None) == (config.global_batch_tokens is None):
        raise ConfigError("give exactly one of --global-batch (rows) and --global-batch-tokens")
    if config.gpus > config.gpus_per_node and config.gpus % config.gpus_per_node:
        raise ConfigError(f"--gpus {config.gpus} is not a whole number of nodes of --gpus-per-node "
                          f"{config.gpus_per_node}")


def run(config: TuneConfig):
    """Plan the run: returns a ``launch.tune.search.Plan`` (ranked candidates, host memory, reasons)."""
    from launch.tune.memory import Allowances, Setup
    from launch.tune.search import Request, plan
    from launch.tune.timing import Efficiency
    from launch.tune.workload import dataset_workload, synthetic_workload
    from megatron_vlm.models.config import qwen25vl_config_from_hf

    _check(config)
    rows = config.global_batch if config.global_batch is not None else config.global_batch_tokens // config.seq_len
    if rows <= 0:
        raise ConfigError(f"the global batch must hold at least one row of {config.seq_len:,} tokens")
    hf_config = load_model_config(config.model)
    try:
        model = qwen25vl_config_from_hf(hf_config)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"--model {config.model}: {err}") from None
    efficiency = Efficiency(gemm=config.gemm_efficiency, attention=config.attention_efficiency)
    if config.gpu == "cpu":
        from launch.tune.calibrate import cpu_preset

        gpu, efficiency = cpu_preset()
    else:
        gpu = GPUS[config.gpu]
    gpu = gpu.with_overrides(memory_gib=config.gpu_memory_gib, bf16_tflops=config.peak_tflops,
                             fp8_tflops=config.fp8_tflops, hbm_gbps=config.hbm_gbps, nvlink_gbps=config.nvlink_gbps,
                             network_gbps=config.network_gbps, host_memory_gib=config.host_memory_gib)
    precision = config.precision or ("fp32" if config.gpu == "cpu" else "bf16")
    if precision == "fp8" and (config.attention_backend != "te" or gpu.fp8_tflops <= 0):
        raise ConfigError(f"--precision fp8 needs --attention-backend te (Transformer Engine) and a GPU with fp8 "
                          f"(the {gpu.name} preset has fp8 peak {gpu.fp8_tflops:g} TFLOP/s)")
    setup = Setup(precision=precision, attention_backend=config.attention_backend,
                  distributed_optimizer=config.distributed_optimizer)
    if config.data:
        workload = dataset_workload(config.data, config.seq_len)
    else:
        workload = synthetic_workload(config.seq_len, sample_tokens=config.sample_tokens, dpi=config.dpi,
                                      image_share=config.image_share, answer_tokens=config.answer_tokens)
    request = Request(gpus=config.gpus, gpus_per_node=min(config.gpus_per_node, config.gpus), global_batch=rows,
                      gpu=gpu, setup=setup, efficiency=efficiency,
                      allowances=Allowances(fragmentation=config.fragmentation, reserved_gib=config.reserved_gib),
                      micro_batches=tuple(config.micro_batch), recompute=tuple(config.recompute),
                      loader_workers=config.loader_workers, prefetch_factor=config.prefetch_factor,
                      only_tp=tuple(config.tp or ()), only_pp=tuple(config.pp or ()), only_cp=tuple(config.cp or ()))
    return plan(model, workload, request)


def main(args: argparse.Namespace) -> int:
    from launch.tune.report import explain, format_table, plan_dict

    config = dataclass_from_args(TuneConfig, args)
    result = run(config)
    layers = result.model.language.num_layers
    if config.explain is not None:
        if not 1 <= config.explain <= len(result.ranked):
            raise LongVLMError(f"--explain {config.explain}: {len(result.ranked)} layouts fit; choose 1.."
                               f"{len(result.ranked)}")
    if config.json:
        out = plan_dict(result, layers, config.top)
        if config.explain is not None:
            out["explained"] = out["ranked"][config.explain - 1] if config.explain <= config.top else None
        print(json.dumps(out, indent=1))
    else:
        print(format_table(result, layers, config.top))
        if config.explain is not None:
            print()
            print(explain(result.ranked[config.explain - 1], result, layers))
    return 0 if result.ranked else 1
