"""The training recipe: typed dataclasses with the paper's defaults, loaded from YAML with overrides.

A recipe is a YAML file whose keys are the fields below (``docs/training.md`` lists them all);
``key=value`` overrides on the command line use the same dotted names (``optimizer.lr=2e-5``,
``parallel.tp=4``). OmegaConf's structured configs do the merging and the type checks; an unknown
key or a value of the wrong type is a :class:`RecipeError` naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_vlm.errors import ConfigError
from megatron_vlm.models.config import (
    ATTENTION_BACKENDS,
    RECOMPUTE_MODES,
    RECOMPUTE_MODULES,
    ROPE_BASE_MODES,
    TRANSFORMER_IMPLS,
    RopeSettings,
    backend_problems,
)
from megatron_vlm.parallel import ParallelLayout
from megatron_vlm.utils.checks import MAX_SEQ_LEN, MAX_WORKERS, check_number

PRECISIONS = ("fp32", "bf16", "fp8")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
ON_BAD_LOSS = ("stop", "skip", "warn")


class RecipeError(ConfigError):
    """A recipe or override that cannot work; the message names the key and the fix."""


@dataclass
class ModelSettings:
    """What to train: the starting checkpoint and how the model is set up."""

    checkpoint: str = ""  # an HF model directory of a registered family (converted once into RUN_DIR/init) or a Megatron checkpoint
    rope: RopeSettings = field(default_factory=RopeSettings)
    transformer_impl: str = "local"  # the layers' linears and norms: local (Megatron-Core's) | te (Transformer Engine; FP8)
    attention_backend: str = "torch"  # core attention: torch (SDPA; CPU and GPU) | te (Transformer Engine; GPU)
    recompute: str = "none"  # activation recomputation: none | selective (recompute_modules) | full
    # selective: core_attn (attention core), layernorm (norm outputs), act (the MLP activation), mlp (whole MLP)
    recompute_modules: list[str] = field(default_factory=lambda: ["core_attn"])
    train_vision: bool = True  # the vision tower: patch (and learned position) embeddings, its layers
    train_merger: bool = True  # the 2x2 patch merger(s) (vision -> language projection; DeepStack's too)
    train_language: bool = True  # the language model


@dataclass
class DataSource:
    """One built dataset (``longvlm build -o PREFIX``) and its share of the packs drawn."""

    prefix: str = ""
    weight: float = 1.0


@dataclass
class DataSettings:
    train: list[DataSource] = field(default_factory=list)
    valid: str | None = None  # a built-dataset prefix scored every logging.eval_interval steps
    pool_dir: str | None = None  # where the pool now is, if it moved since the datasets were built
    num_workers: int = 2  # loader processes per rank (page decoding, patching, mRoPE positions)
    prefetch: int = 2  # micro-batches each worker prepares ahead


@dataclass
class TrainSettings:
    seq_length: int | None = None  # longest row; default: the datasets' seq_length. Rows train at their own length
    micro_batch_size: int = 1  # rows per micro-batch on each data-parallel rank
    global_batch_size: int = 32  # rows per optimizer step (32 x 131,072 = the paper's 4M tokens)
    train_tokens: float | None = 5e9  # token budget (rows x seq_length); sets the steps unless train_steps does
    train_steps: int | None = None  # optimizer steps (overrides train_tokens)
    precision: str = "bf16"  # fp32 | bf16 | fp8 (fp8 needs Transformer Engine)
    seed: int = 1234


@dataclass
class OptimizerSettings:
    lr: float = 1e-5
    min_lr: float = 1e-6
    schedule: str = "cosine"  # cosine | linear | constant | wsd (warmup-stable-decay)
    warmup_fraction: float = 0.1  # of the steps
    wsd_decay_fraction: float = 0.1  # wsd: the final fraction of the steps that decays
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0  # global gradient-norm clip; 0 disables
    distributed_optimizer: bool = True  # shard optimizer state over data-parallel ranks (GPU; ignored on CPU)


@dataclass
class CheckpointSettings:
    save_interval: int = 200  # steps; 0 saves only at the end and on a preemption signal
    keep_last: int = 2  # older checkpoints are deleted once a newer one is complete
    async_save: bool = True  # write in the background while training continues (GPU)
    exit_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])  # save at step end, then exit


@dataclass
class LoggingSettings:
    log_interval: int = 1  # steps between progress lines
    eval_interval: int = 0  # steps between validation passes over data.valid (0: never)
    eval_batches: int = 8  # micro-batches per data-parallel rank per validation pass
    tensorboard: bool = True
    # dense peak TFLOP/s of one GPU at train.precision, for MFU; None: the preset of the GPU found
    # (megatron_vlm.hardware.GPUS: H100, H200, A100, H20, B200), else only TFLOP/s per GPU is logged
    peak_tflops: float | None = None


@dataclass
class GuardSettings:
    on_nan: str = "stop"  # a NaN/inf loss: stop | skip (the step's update) | warn
    spike_factor: float = 0.0  # a loss above factor x the mean of the last spike_window: a spike (0: off)
    spike_window: int = 20
    on_spike: str = "warn"  # stop | skip | warn


@dataclass
class TrainConfig:
    """A whole training run (``longvlm train RECIPE.yaml``)."""

    model: ModelSettings = field(default_factory=ModelSettings)
    parallel: ParallelLayout = field(default_factory=ParallelLayout)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)

    def check(self) -> None:
        """Checks that need no files and no processes; a :class:`RecipeError` naming the key."""
        _choice("model.attention_backend", self.model.attention_backend, ATTENTION_BACKENDS)
        _choice("model.transformer_impl", self.model.transformer_impl, TRANSFORMER_IMPLS)
        _choice("model.recompute", self.model.recompute, RECOMPUTE_MODES)
        _choice("model.rope.mode", self.model.rope.mode, ROPE_BASE_MODES)
        for module in self.model.recompute_modules:
            _choice("model.recompute_modules", module, RECOMPUTE_MODULES)
        _choice("train.precision", self.train.precision, PRECISIONS)
        _choice("optimizer.schedule", self.optimizer.schedule, SCHEDULES)
        _choice("guard.on_nan", self.guard.on_nan, ON_BAD_LOSS)
        _choice("guard.on_spike", self.guard.on_spike, ON_BAD_LOSS)
        problems = self.backend_problems()
        if problems:
            raise RecipeError("; ".join(problems))
        if not self.model.checkpoint:
            raise RecipeError("model.checkpoint is not set: give an HF Qwen2.5-VL directory or a Megatron checkpoint")
        if not (self.model.train_vision or self.model.train_merger or self.model.train_language):
            raise RecipeError("model.train_vision, train_merger and train_language are all false: nothing to train")
        if not self.data.train:
            raise RecipeError("data.train is empty: list built datasets as [{prefix: PREFIX, weight: 1.0}, ...]")
        for i, source in enumerate(self.data.train):
            if not source.prefix:
                raise RecipeError(f"data.train[{i}].prefix is not set")
        for i, source in enumerate(self.data.train):
            _number(f"data.train[{i}].weight", source.weight, gt=0)
        self._check_numbers()
        if self.train.global_batch_size % self.train.micro_batch_size:
            raise RecipeError(f"train.global_batch_size {self.train.global_batch_size} is not a multiple of "
                              f"train.micro_batch_size {self.train.micro_batch_size}")
        if self.train.train_steps is None and not self.train.train_tokens:
            raise RecipeError("set train.train_steps or train.train_tokens")
        if self.logging.eval_interval and not self.data.valid:
            raise RecipeError("logging.eval_interval needs data.valid (a built-dataset prefix to score)")
        import signal

        for name in self.checkpoint.exit_signals:
            if not hasattr(signal, name):
                raise RecipeError(f"checkpoint.exit_signals: unknown signal {name!r} (e.g. SIGTERM, SIGUSR1)")

    def _check_numbers(self) -> None:
        """Every number of the recipe within its range (``nan``, ``inf`` and negatives never are)."""
        t, o, d, g, log, ck, rope = (self.train, self.optimizer, self.data, self.guard, self.logging, self.checkpoint,
                                     self.model.rope)
        for key, value in (("train.micro_batch_size", t.micro_batch_size), ("train.global_batch_size", t.global_batch_size),
                           ("train.train_steps", t.train_steps), ("logging.log_interval", log.log_interval),
                           ("logging.eval_batches", log.eval_batches), ("checkpoint.keep_last", ck.keep_last),
                           ("guard.spike_window", g.spike_window)):
            _number(key, value, ge=1)
        for key, value in (("train.seed", t.seed), ("checkpoint.save_interval", ck.save_interval),
                           ("logging.eval_interval", log.eval_interval), ("optimizer.weight_decay", o.weight_decay),
                           ("optimizer.clip_grad", o.clip_grad), ("guard.spike_factor", g.spike_factor)):
            _number(key, value, ge=0)
        _number("data.num_workers", d.num_workers, ge=0, le=MAX_WORKERS)
        _number("data.prefetch", d.prefetch, ge=1, le=MAX_WORKERS)
        _number("train.seq_length", t.seq_length, ge=1, le=MAX_SEQ_LEN)
        _number("model.rope.target_length", rope.target_length, ge=1, le=MAX_SEQ_LEN)
        _number("model.rope.original_length", rope.original_length, ge=1, le=MAX_SEQ_LEN)
        for key, value in (("train.train_tokens", t.train_tokens or None), ("optimizer.lr", o.lr),
                           ("optimizer.adam_eps", o.adam_eps), ("logging.peak_tflops", log.peak_tflops),
                           ("model.rope.base", rope.base)):
            _number(key, value, gt=0)
        _number("optimizer.min_lr", o.min_lr, ge=0, le=o.lr)
        for key in ("adam_beta1", "adam_beta2", "warmup_fraction", "wsd_decay_fraction"):
            _number(f"optimizer.{key}", getattr(o, key), ge=0, lt=1)

    def backend_problems(self, arch=None, te_version: str | None = None) -> list[str]:
        """Why the model settings, layout and precision cannot run together (``megatron_vlm.models.config``)."""
        m = self.model
        return backend_problems(m.transformer_impl, m.attention_backend, self.parallel,
                                fp8=self.train.precision == "fp8", recompute=m.recompute,
                                recompute_modules=m.recompute_modules, arch=arch, te_version=te_version)

    def seq_length(self, longest_row: int) -> int:
        """The run's row length: ``train.seq_length``, else the datasets' longest row."""
        return self.train.seq_length or longest_row

    def steps(self, seq_length: int) -> int:
        """Optimizer steps of the run: ``train_steps``, else the token budget in global batches of ``seq_length`` rows."""
        if self.train.train_steps is not None:
            return self.train.train_steps
        return max(1, round(self.train.train_tokens / (self.train.global_batch_size * seq_length)))


def _number(key: str, value, **bounds: float) -> None:
    check_number(key, value, error=RecipeError, **bounds)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RecipeError(f"{key}={value!r} is not one of {', '.join(choices)}")


def load_recipe(source: str | Path | dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML recipe (path or dict) and ``key=value`` overrides, checked."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    where = "the recipe"
    try:
        base = OmegaConf.structured(TrainConfig)
        layers = [base]
        if isinstance(source, dict):
            layers.append(OmegaConf.create(source))
        elif source is not None:
            where = str(source)
            path = Path(source)
            if path.is_dir():
                raise RecipeError(f"{source}: is a folder, not a recipe file (a run directory's recipe is "
                                  f"{path / 'config.yaml'})")
            if not path.is_file():
                raise RecipeError(f"{source}: no such recipe file")
            layers.append(_recipe_file(path))
        layers += [_override(item) for item in overrides]
        if overrides:
            where = "the overrides"
        config = OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        reason = str(err).splitlines()[0]
        raise RecipeError(f"{where}: {'key ' + repr(key) + ': ' if key else ''}{reason}") from None
    except TypeError as err:  # e.g. a dotted override into a list element
        raise RecipeError(f"{where}: {err}") from None
    config.check()
    return config


def _yaml_reason(err: Exception) -> str:
    """A YAML parser's complaint in one line (``problem at line L column C``)."""
    import yaml

    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        return f"{err.problem}" + (f" at line {mark.line + 1} column {mark.column + 1}" if mark else "")
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _recipe_file(path: Path):
    """The YAML mapping in a recipe file (OmegaConf's YAML: ``1e-5`` is a float); a ``RecipeError`` naming the
    file if it is not one."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    what = "a recipe is a YAML mapping of keys (e.g. 'optimizer: {lr: 2.0e-5}')"
    try:
        layer = OmegaConf.load(path)
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text (byte {err.start}); {what}") from None
    except (yaml.YAMLError, RecursionError) as err:
        raise RecipeError(f"{path}: not valid YAML ({_yaml_reason(err)})") from None
    except OSError as err:  # also OmegaConf's "Invalid loaded object type" for a single value
        raise RecipeError(f"{path}: {what}, not a single value" if "loaded object type" in str(err)
                          else f"{path}: cannot be read ({err.strerror or err})") from None
    if not isinstance(layer, DictConfig):
        raise RecipeError(f"{path}: {what}, not a list")
    return layer


def _override(item: str):
    """One ``key=value`` override as a config layer; a ``RecipeError`` naming it if it is not one."""
    import yaml
    from omegaconf import OmegaConf

    key, equals, _ = str(item).partition("=")
    if not equals or not key.strip() or any(not part for part in key.split(".")):
        raise RecipeError(f"override {item!r} is not key=value (e.g. optimizer.lr=2e-5)")
    try:
        return OmegaConf.from_dotlist([item])
    except (yaml.YAMLError, RecursionError) as err:
        raise RecipeError(f"override {item!r}: its value is not valid YAML ({_yaml_reason(err)})") from None


def to_yaml(config: TrainConfig) -> str:
    """The resolved config as YAML (what ``--print-config`` shows and the run directory keeps)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(config))


def differences(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every leaf that differs."""
    def flat(obj, prefix=""):
        if dataclasses.is_dataclass(obj):
            out = {}
            for f in dataclasses.fields(obj):
                out.update(flat(getattr(obj, f.name), f"{prefix}{f.name}."))
            return out
        return {prefix[:-1]: obj}

    a, b = flat(old), flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


# Keys a resumed run may change: how it runs, not what it computes.
RESUMABLE_CHANGES = ("parallel.", "train.micro_batch_size", "train.train_steps", "train.train_tokens",
                     "data.num_workers", "data.prefetch", "data.pool_dir", "checkpoint.", "logging.", "guard.",
                     "model.attention_backend", "model.transformer_impl", "model.recompute", "model.recompute_modules",
                     "optimizer.distributed_optimizer")
