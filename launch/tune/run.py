"""``longvlm tune``'s work, shared by the CLI and ``longvlm.api.tune``: read the model (``load_model``), plan
its layouts (``run``) and write the chosen one into a training recipe (``write_recipe``)."""

from __future__ import annotations

from pathlib import Path

from launch.tune.config import DEFAULT_SEQ_LENGTH, TuneConfig
from launch.tune.presets import MODELS
from megatron_vlm.errors import ConfigError, LongVLMError
from megatron_vlm.hardware import GPUS


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


def _first(*values):
    return next((v for v in values if v is not None), None)


def run(config: TuneConfig):
    """Plan the run: returns a ``launch.tune.search.Plan`` (ranked candidates, host memory, reasons)."""
    from launch.tune.memory import Allowances, Setup
    from launch.tune.search import Request, plan
    from launch.tune.timing import Efficiency
    from launch.tune.workload import dataset_workload, synthetic_workload

    config.check()
    arch, recipe = load_model(config.model)
    train = recipe.train if recipe else None
    prefixes = config.data or ([s.prefix for s in recipe.data.train] if recipe else None)
    if prefixes:
        workload = dataset_workload(prefixes, _first(config.seq_length, train and train.seq_length))
    else:
        workload = synthetic_workload(_first(config.seq_length, train and train.seq_length, DEFAULT_SEQ_LENGTH),
                                      arch.family.geometry, sample_tokens=config.sample_tokens, dpi=config.dpi,
                                      image_share=config.image_share, answer_tokens=config.answer_tokens)
    seq_length = workload.seq_length
    rows = _first(config.global_batch,
                  config.global_batch_tokens // seq_length if config.global_batch_tokens is not None else None,
                  train and train.global_batch_size)
    if rows is None:
        raise ConfigError("give --global-batch (rows per step) or --global-batch-tokens, or a recipe that has one")
    if rows <= 0:
        raise ConfigError(f"--global-batch-tokens {config.global_batch_tokens:,} is less than one row of --seq-length "
                          f"{seq_length:,} tokens")
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
    recipe.train.seq_length = result.workload.seq_length
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
