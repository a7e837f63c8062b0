"""``longvlm tune``: rank the parallel layouts of a Qwen2.5-VL training run by predicted speed.

    longvlm tune --model qwen2.5-vl-7b --seq-len 131072 --gpus 64 --gpus-per-node 8 --gpu h100 \\
        --global-batch 32 [--data DATA_PREFIX] [--explain 1] [--json] [--write-recipe OUT.yaml]

``--model`` is a preset, a Hugging Face checkpoint, a Megatron checkpoint or a training recipe; a
recipe also supplies the sequence length, global batch, precision, attention backend, optimizer
sharding, datasets and loader settings (options given on the command line win).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from launch.tune.presets import MODELS
from megatron_vlm.errors import ConfigError, LongVLMError
from megatron_vlm.hardware import GPUS
from megatron_vlm.models.config import ATTENTION_BACKENDS, RECOMPUTE_MODES, TRANSFORMER_IMPLS
from megatron_vlm.utils.atomic import check_output_file
from megatron_vlm.utils.checks import MAX_GPUS, check_number
from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args

GPU_CHOICES = (*GPUS, "cpu")
PRECISIONS = ("fp32", "bf16", "fp8")
DEFAULT_SEQ_LEN = 131072


@dataclass
class TuneConfig:
    model: str = field(metadata={
        "metavar": "MODEL", "help": f"a preset ({', '.join(MODELS)}), a Hugging Face checkpoint directory or "
        "config.json, a Megatron checkpoint ('longvlm convert' or training), or a training recipe (YAML file or "
        "built-in name) whose settings become the defaults below"})
    gpus: int = field(metadata={"help": "GPUs in the job"})
    seq_len: int | None = field(default=None, metadata={
        "help": f"longest packed row in tokens (default: the recipe's train.seq_length, the datasets' "
                f"max_seq_len, else {DEFAULT_SEQ_LEN})"})
    global_batch: int | None = field(default=None, metadata={
        "metavar": "ROWS", "help": "rows per optimizer step (default: the recipe's train.global_batch_size)"})
    global_batch_tokens: int | None = field(default=None, metadata={
        "metavar": "TOKENS", "help": "instead of --global-batch: tokens per step, in rows of --seq-len (rounded down)"})
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
        "choices": PRECISIONS, "help": "training precision (default: the recipe's, else bf16; fp32 with --gpu cpu); "
        "fp8 needs --transformer-impl te"})
    transformer_impl: str | None = field(default=None, metadata={
        "choices": TRANSFORMER_IMPLS, "help": "the layers' linears and norms: local (Megatron-Core's) or te "
        "(Transformer Engine; FP8) (default: the recipe's, else local)"})
    attention_backend: str | None = field(default=None, metadata={
        "choices": ATTENTION_BACKENDS, "help": "the core attention: torch (SDPA; CP all-gathers K/V) or te (Transformer "
        "Engine; CP as a p2p ring, a2a or all_gather, each weighed) (default: the recipe's, else torch)"})
    distributed_optimizer: bool | None = field(default=None, metadata={
        "help": "Megatron's distributed optimizer: optimizer state sharded over DP x CP (default: the recipe's, "
                "else on; off with --gpu cpu, as training runs there)"})
    data: list[str] | None = field(default=None, metadata={
        "metavar": "DATA_PREFIX", "help": "plan for the rows of built datasets (longvlm build): real sample lengths, "
        "page images and answer tokens (default: the recipe's data.train, else synthetic rows)"})
    sample_tokens: int | None = field(default=None, metadata={
        "help": "synthetic rows: tokens per packed sample (default: one sample per row)"})
    dpi: float = field(default=144.0, metadata={"help": "synthetic rows: page render resolution (A4 pages)"})
    image_share: float = field(default=0.9, metadata={"help": "synthetic rows: share of tokens that are page images"})
    answer_tokens: int = field(default=1024, metadata={"help": "synthetic rows: loss (answer) tokens per row"})
    micro_batch: list[int] = field(default_factory=lambda: [1, 2], metadata={
        "help": "micro-batch sizes (rows) to consider"})
    recompute: list[str] = field(default_factory=lambda: list(RECOMPUTE_MODES), metadata={
        "choices": RECOMPUTE_MODES, "help": "activation recompute modes to consider; selective is weighed with each "
        "module set: attn (core attention), norm+act (norm outputs and the MLP activation: element-wise), both"})
    tp: list[int] | None = field(default=None, metadata={"help": "only these tensor-parallel sizes"})
    pp: list[int] | None = field(default=None, metadata={"help": "only these pipeline-parallel sizes"})
    cp: list[int] | None = field(default=None, metadata={"help": "only these context-parallel sizes"})
    fragmentation: float = field(default=0.10, metadata={
        "help": "allocator fragmentation allowance, as a fraction of activations"})
    reserved_gib: float | None = field(default=None, metadata={
        "help": "per-GPU memory for CUDA context, NCCL, workspaces (default: 3; 0 with --gpu cpu)"})
    gemm_efficiency: float = field(default=0.70, metadata={"help": "achieved fraction of the matmul peak"})
    attention_efficiency: float = field(default=0.45, metadata={
        "help": "achieved fraction of the bf16 peak in attention"})
    loader_workers: int | None = field(default=None, metadata={
        "help": "data loader workers per GPU process (default: the recipe's data.num_workers, else the loader's)"})
    prefetch_factor: int | None = field(default=None, metadata={
        "help": "micro-batches each loader worker prefetches (default: the recipe's data.prefetch, else the loader's)"})
    top: int = field(default=10, metadata={"help": "layouts to show"})
    explain: int | None = field(default=None, metadata={
        "metavar": "RANK", "help": "break down the layout ranked RANK (1 = fastest): memory per stage, time per part"})
    json: bool = field(default=False, metadata={"help": "print the ranked layouts as JSON"})
    write_recipe: str | None = field(default=None, metadata={
        "metavar": "OUT.yaml", "help": "write a training recipe with the layout ranked --explain RANK (default 1): "
        "the input recipe's other settings, or the defaults (docs/training.md)"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Rank the parallel layouts (TP, PP, CP, DP, SP, micro-batch, recompute, first-stage "
                          "layers) of a Qwen2.5-VL training run by predicted step time, with predicted peak memory "
                          "per GPU. The cost model knows the VLM: vision tower on the first pipeline stage, images "
                          "split over CP ranks, answer-only logits, attention at the packed samples' real lengths "
                          "(docs/tune.md). Exits 1 when no layout fits, with the reason.")
    add_dataclass_arguments(parser, TuneConfig)


def _is_recipe(model: str) -> Path | None:
    from training.cli import recipe_path

    path = recipe_path(model)
    return path if path.suffix in (".yaml", ".yml") and path.is_file() else None


def load_model(model: str):
    """``(arch, recipe or None)`` of ``--model`` (any registered family): a preset, an HF checkpoint or config.json, a
    Megatron checkpoint (its ``longvlm.json``) or a training recipe (its ``model.checkpoint``)."""
    from megatron_vlm.formats.checkpoint import TRACKER_NAME, MegatronCheckpoint
    from megatron_vlm.models.registry import read_arch

    if model in MODELS:
        return read_arch(MODELS[model], name=f"preset {model}"), None
    recipe = None
    if (path := _is_recipe(model)) is not None:
        from training.config import load_recipe

        recipe = load_recipe(path)
        model = recipe.model.checkpoint
        source = f"{path}: model.checkpoint {model}"
    else:
        source = f"--model {model}"
    root = Path(model)
    if (root / TRACKER_NAME).is_file():
        return read_arch(MegatronCheckpoint.open(root).meta["hf_config"], name=source), recipe
    if root.is_file() or (root / "config.json").is_file():
        return read_arch(root, name=source), recipe
    if recipe is not None:
        raise ConfigError(f"{source} is not here (no config.json, no {TRACKER_NAME}): run tune where the checkpoint "
                          "is, or pass --model a preset or checkpoint and the recipe's settings as options")
    raise ConfigError(f"{source}: not a preset ({', '.join(MODELS)}), a training recipe, a Hugging Face "
                      f"checkpoint (no config.json) or a Megatron checkpoint (no {TRACKER_NAME})")


MAX_SEQ_LEN = 2 ** 24  # 16M tokens, 32x the paper's longest: a synthetic row lists its pages one by one


def _check(config: TuneConfig) -> None:
    """Every option on its own (``run`` checks them against the model and the cluster)."""
    for name in ("gpus", "gpus_per_node"):
        check_number(f"--{name.replace('_', '-')}", getattr(config, name), ge=1, le=MAX_GPUS)
    for name in ("top", "global_batch", "global_batch_tokens", "sample_tokens",
                 "answer_tokens", "prefetch_factor", "explain"):
        check_number(f"--{name.replace('_', '-')}", getattr(config, name), ge=1)
    check_number("--seq-len", config.seq_len, ge=1, le=MAX_SEQ_LEN)
    check_number("--loader-workers", config.loader_workers, ge=0)
    for name in ("gpu_memory_gib", "peak_tflops", "hbm_gbps", "nvlink_gbps", "network_gbps", "host_memory_gib",
                 "dpi"):
        check_number(f"--{name.replace('_', '-')}", getattr(config, name), gt=0)
    check_number("--fp8-tflops", config.fp8_tflops, ge=0)
    check_number("--reserved-gib", config.reserved_gib, ge=0)
    check_number("--image-share", config.image_share, ge=0, lt=1)
    check_number("--fragmentation", config.fragmentation, ge=0, le=1)
    for name in ("gemm_efficiency", "attention_efficiency"):
        check_number(f"--{name.replace('_', '-')}", getattr(config, name), gt=0, le=1)
    for name in ("micro_batch", "tp", "pp", "cp"):
        for value in getattr(config, name) or ():
            check_number(f"--{name.replace('_', '-')}", value, ge=1)
    if config.global_batch is not None and config.global_batch_tokens is not None:
        raise ConfigError("give one of --global-batch (rows) and --global-batch-tokens, not both")
    if config.gpus > config.gpus_per_node and config.gpus % config.gpus_per_node:
        raise ConfigError(f"--gpus {config.gpus} is not a whole number of nodes of --gpus-per-node "
                          f"{config.gpus_per_node}")
    for name in ("tp", "pp", "cp"):
        if bad := [v for v in getattr(config, name) or () if config.gpus % v]:
            raise ConfigError(f"--{name} {' '.join(map(str, bad))} does not divide --gpus {config.gpus}: no layout "
                              "can use it")
    if config.write_recipe:
        check_output_file(config.write_recipe, "--write-recipe", replace=False)


def _first(*values):
    return next((v for v in values if v is not None), None)


def run(config: TuneConfig):
    """Plan the run: returns a ``launch.tune.search.Plan`` (ranked candidates, host memory, reasons)."""
    from launch.tune.memory import Allowances, Setup
    from launch.tune.search import Request, plan
    from launch.tune.timing import Efficiency
    from launch.tune.workload import dataset_workload, synthetic_workload

    _check(config)
    arch, recipe = load_model(config.model)
    train = recipe.train if recipe else None
    prefixes = config.data or ([s.prefix for s in recipe.data.train] if recipe else None)
    if prefixes:
        workload = dataset_workload(prefixes, _first(config.seq_len, train and train.seq_length))
    else:
        workload = synthetic_workload(_first(config.seq_len, train and train.seq_length, DEFAULT_SEQ_LEN),
                                      arch.family.geometry, sample_tokens=config.sample_tokens, dpi=config.dpi,
                                      image_share=config.image_share, answer_tokens=config.answer_tokens)
    seq_len = workload.seq_len
    rows = _first(config.global_batch,
                  config.global_batch_tokens // seq_len if config.global_batch_tokens is not None else None,
                  train and train.global_batch_size)
    if rows is None:
        raise ConfigError("give --global-batch (rows per step) or --global-batch-tokens, or a recipe that has one")
    if rows <= 0:
        raise ConfigError(f"--global-batch-tokens {config.global_batch_tokens:,} is less than one row of --seq-len "
                          f"{seq_len:,} tokens")
    if too_big := [m for m in config.micro_batch if m > rows]:
        raise ConfigError(f"--micro-batch {' '.join(map(str, too_big))} exceeds the global batch of {rows} rows")
    efficiency = Efficiency(gemm=config.gemm_efficiency, attention=config.attention_efficiency)
    if config.gpu == "cpu":
        from launch.tune.calibrate import cpu_preset

        gpu, efficiency = cpu_preset()
    else:
        gpu = GPUS[config.gpu]
    gpu = gpu.with_overrides(memory_gib=config.gpu_memory_gib, bf16_tflops=config.peak_tflops,
                             fp8_tflops=config.fp8_tflops, hbm_gbps=config.hbm_gbps, nvlink_gbps=config.nvlink_gbps,
                             network_gbps=config.network_gbps, host_memory_gib=config.host_memory_gib)
    reserved = _first(config.reserved_gib, 0.0 if config.gpu == "cpu" else 3.0)
    if reserved >= gpu.memory_gib:
        raise ConfigError(f"--reserved-gib {reserved:g} leaves nothing of the {gpu.name}'s {gpu.memory_gib:g} GiB")
    precision = _first(config.precision, train and train.precision, "fp32" if config.gpu == "cpu" else "bf16")
    backend = _first(config.attention_backend, recipe and recipe.model.attention_backend, "torch")
    impl = _first(config.transformer_impl, recipe and recipe.model.transformer_impl, "local")
    if precision == "fp8" and (impl != "te" or gpu.fp8_tflops <= 0):
        raise ConfigError(f"precision fp8 needs --transformer-impl te (Transformer Engine's linears) and a GPU with "
                          f"fp8 (the {gpu.name} preset has an fp8 peak of {gpu.fp8_tflops:g} TFLOP/s)")
    cpu = config.gpu == "cpu"  # training on CPUs runs without the distributed optimizer and overlap
    if cpu and "te" in (impl, backend):
        raise ConfigError("--gpu cpu measures this machine, which runs neither Transformer Engine's linears nor its "
                          "attention: use --transformer-impl local --attention-backend torch")
    setup = Setup(precision=precision, attention_backend=backend, transformer_impl=impl, overlap_grad_reduce=not cpu,
                  distributed_optimizer=not cpu and _first(config.distributed_optimizer,
                                                           recipe and recipe.optimizer.distributed_optimizer, True))
    request = Request(gpus=config.gpus, gpus_per_node=min(config.gpus_per_node, config.gpus), global_batch=rows,
                      gpu=gpu, setup=setup, efficiency=efficiency,
                      allowances=Allowances(fragmentation=config.fragmentation,
                                            reserved_gib=reserved),
                      micro_batches=tuple(config.micro_batch), recompute=tuple(config.recompute),
                      loader_workers=_first(config.loader_workers, recipe and recipe.data.num_workers),
                      prefetch_factor=_first(config.prefetch_factor, recipe and recipe.data.prefetch),
                      only_tp=tuple(config.tp or ()), only_pp=tuple(config.pp or ()), only_cp=tuple(config.cp or ()))
    result = plan(arch, workload, request)
    result.recipe = recipe
    if config.explain is not None and result.ranked and not 1 <= config.explain <= len(result.ranked):
        raise LongVLMError(f"--explain {config.explain}: {len(result.ranked)} layouts fit; choose 1.."
                           f"{len(result.ranked)}")
    if config.write_recipe and result.ranked:
        result.written_recipe = write_recipe(result, result.ranked[(config.explain or 1) - 1], config)
    return result


def write_recipe(result, candidate, config: TuneConfig) -> Path:
    """The layout of ``candidate`` in a training recipe (the input recipe's other settings, or the defaults)."""
    from megatron_vlm.utils.atomic import atomic_write
    from training.config import DataSource, TrainConfig, to_yaml

    recipe = result.recipe or TrainConfig()
    if result.recipe is None:
        recipe.model.checkpoint = config.model if config.model not in MODELS else ""
        recipe.data.train = [DataSource(prefix=p) for p in (config.data or [])]
    layout, setup = candidate.layout, result.request.setup
    recipe.parallel = layout.parallel
    recipe.model.recompute = layout.recompute
    if layout.recompute == "selective":
        recipe.model.recompute_modules = list(layout.recompute_modules)
    recipe.model.attention_backend = setup.attention_backend
    recipe.model.transformer_impl = setup.transformer_impl
    recipe.train.micro_batch_size = layout.micro_batch
    recipe.train.global_batch_size = result.request.global_batch
    recipe.train.seq_length = result.workload.seq_len
    recipe.train.precision = setup.precision
    recipe.optimizer.distributed_optimizer = setup.distributed_optimizer
    problems = recipe.backend_problems(result.arch)
    if problems:  # the search proposes only what runs; a recipe it cannot write is a bug
        raise AssertionError(f"the tuner chose a combination training refuses: {'; '.join(problems)}")
    header = (f"# written by `longvlm tune` for {result.request.gpus} x {result.request.gpu.name}: {layout.label()}, "
              f"micro-batch {layout.micro_batch}, recompute {layout.recompute_label}; predicted "
              f"{candidate.peak.total / 2 ** 30:.1f} GiB peak per GPU, {candidate.time.step:.2f} s per step\n")
    missing = [k for k, v in (("model.checkpoint", recipe.model.checkpoint), ("data.train", recipe.data.train)) if not v]
    if missing:
        header += f"# set {' and '.join(missing)} before training\n"
    with atomic_write(config.write_recipe, "w") as f:
        f.write(header + to_yaml(recipe))
    return Path(config.write_recipe)


def main(args: argparse.Namespace) -> int:
    from launch.tune.report import explain, format_table, plan_dict

    config = dataclass_from_args(TuneConfig, args)
    result = run(config)
    layers = result.arch.num_layers
    # with nothing that fits, --explain breaks down the layout that comes closest
    chosen = result.ranked[(config.explain or 1) - 1] if result.ranked else result.smallest
    if config.json:
        out = plan_dict(result, layers, config.top)
        if config.explain is not None and chosen is not None:
            from launch.tune.report import candidate_dict

            out["explained"] = candidate_dict(chosen, layers)
        print(json.dumps(out, indent=1))
    else:
        print(format_table(result, layers, config.top))
        if config.explain is not None and chosen is not None:
            print()
            print(explain(chosen, result, layers))
    if result.written_recipe and not config.json and chosen is not None:
        print(f"\nwrote {result.written_recipe} ({chosen.layout.label()}, recompute {chosen.layout.recompute_label})")
    return 0 if result.ranked else 1
