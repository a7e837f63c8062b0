"""Experiment files (``recipes/study/*.yaml``): everything one run of the study needs, as data.

An experiment names the synth tasks (options of ``longvlm synth``), the build (options of ``longvlm
build``: mixture, length distribution, short data and its share, page markers, budget), the training
recipe with its ``key=value`` overrides, an optional follow-up phase (``sft``: another build and
training run starting from the first one's checkpoint, as the paper's OCR runs get), and the
evaluation suite (``eval``: named ``longvlm eval`` runs with their options). ``inherit: FILE`` takes
another file's keys first (OmegaConf merge: mappings merge, lists are replaced); the shared
``inputs`` (pool, tokenizer, base model, benchmark files) are usually left ``???`` there and given
on the command line as ``inputs.pool=/data/pool``. Unknown keys, missing values and options that
the stages do not have are errors naming the file and key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_vlm.errors import LongVLMError

EVAL_TASKS = ("niah", "docqa", "mmniah")
# Options each stage sets itself from the study's own artifacts (an experiment file may not set them).
OWNED = {"synth": ("pool", "output", "shard", "num_shards", "merge", "progress"),
         "build": ("tasks", "pool", "tokenizer", "output", "progress"),
         "eval": ("checkpoint", "output", "progress")}


class StudyError(LongVLMError, ValueError):
    """A bad experiment file or study option: the message names the file and key."""


@dataclass
class Inputs:
    pool: str = "???"  # a pool written by `longvlm pool` (the study does not pool PDFs)
    tokenizer: str = "???"  # the model's Qwen2.5-VL tokenizer directory
    base_model: str = "???"  # the Hugging Face checkpoint training starts from
    data: dict[str, str] = field(default_factory=dict)  # named files the options refer to as ${inputs.data.NAME}


@dataclass
class TrainSpec:
    recipe: str = "mmprolong-7b-128k"
    overrides: list[str] = field(default_factory=list)


@dataclass
class Phase:
    """A follow-up build + training run from the previous phase's checkpoint (e.g. SFT on short data)."""

    build: dict[str, Any] = field(default_factory=dict)
    train: TrainSpec = field(default_factory=TrainSpec)


@dataclass
class EvalSpec:
    name: str = "???"
    task: str = "docqa"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    name: str = "???"
    paper: str = ""  # the section / table / figure of the paper it mirrors
    notes: list[str] = field(default_factory=list)  # values the paper does not give, and what is used
    inputs: Inputs = field(default_factory=Inputs)
    synth: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    train: TrainSpec = field(default_factory=TrainSpec)
    sft: Phase | None = None
    eval: list[EvalSpec] = field(default_factory=list)
    file: str = ""  # where it was read from (set by load_experiment)


def _layers(path: Path, seen: tuple[Path, ...] = ()) -> list:
    from omegaconf import OmegaConf

    if path in seen:
        raise StudyError(f"{path}: 'inherit' goes in a circle ({' -> '.join(str(p) for p in (*seen, path))})")
    if not path.is_file():
        raise StudyError(f"{path}: no such experiment file" + (f" (inherited by {seen[-1]})" if seen else ""))
    layer = OmegaConf.load(path)
    parent = layer.pop("inherit", None)
    if parent is None:
        return [layer]
    return [*_layers((path.parent / str(parent)).resolve(), (*seen, path)), layer]


def raw_experiment(path: str | Path):
    """The merged file (with what it inherits) as an OmegaConf mapping, nothing resolved or checked."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(*_layers(Path(path).resolve()))


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """An experiment file (with what it inherits) and ``key=value`` overrides, typed and checked."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path).resolve()
    for item in overrides:
        if "=" not in item:
            raise StudyError(f"override {item!r} is not key=value (e.g. inputs.pool=/data/pool)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Experiment), *_layers(path),
                                 OmegaConf.from_dotlist(list(overrides)))
        missing = ["name"] if OmegaConf.is_missing(merged, "name") else []
        missing += [f"inputs.{k}" for k in ("pool", "tokenizer", "base_model") if OmegaConf.is_missing(merged.inputs, k)]
        missing += [f"{s}.{k}" for s in ("synth", "build") for k in merged[s] if OmegaConf.is_missing(merged[s], k)]
        missing = missing or sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise StudyError(f"{path}: {', '.join(missing)} not set; give them on the command line "
                             f"(e.g. {missing[0]}=...) or in the file")
        experiment = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        reason = str(err).splitlines()[0]
        hint = re.search(r"Interpolation key '(inputs\.[^']+)' not found", reason)
        hint = f"; give {hint.group(1)}=... on the command line" if hint else ""
        raise StudyError(f"{path}: {'key ' + repr(key) + ': ' if key else ''}{reason}{hint}") from None
    experiment.file = str(path)
    check(experiment)
    return experiment


def check(experiment: Experiment) -> None:
    """Every stage option exists (checked against the stage's own dataclass), names are usable."""
    from megatron_vlm.utils.config_args import option_names, renamed_options
    from preprocess.dataset.config import BuildConfig
    from preprocess.synth.config import SynthConfig

    where = experiment.file
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", experiment.name):
        raise StudyError(f"{where}: name {experiment.name!r} must be letters, digits, '.', '_' or '-'")
    sections = [("synth", experiment.synth, SynthConfig, OWNED["synth"]),
                ("build", experiment.build, BuildConfig, OWNED["build"])]
    if experiment.sft is not None:
        sections.append(("sft.build", experiment.sft.build, BuildConfig, OWNED["build"]))
    for section, options, cls, owned in sections:
        known = set(option_names(cls)) - set(owned)
        renamed = renamed_options(cls)
        if old := sorted(set(options) & set(renamed)):
            raise StudyError(f"{where}: {section}.{old[0]} is now {section}.{renamed[old[0]]}: rename the key "
                             "(the same value)")
        unknown = sorted(set(options) - known)
        if unknown:
            raise StudyError(f"{where}: {section}.{unknown[0]} is not an option of longvlm {section.split('.')[-1]} "
                             f"that an experiment sets (choose from {', '.join(sorted(known))})")
    names = [e.name for e in experiment.eval]
    for spec in experiment.eval:
        if spec.task not in EVAL_TASKS:
            raise StudyError(f"{where}: eval {spec.name}: task {spec.task!r} is not one of {', '.join(EVAL_TASKS)}")
        if set(spec.options) & set(OWNED["eval"]):
            raise StudyError(f"{where}: eval {spec.name}: {sorted(set(spec.options) & set(OWNED['eval']))[0]} is set "
                             "by the study (the trained model, its results folder)")
    if len(set(names)) != len(names):
        raise StudyError(f"{where}: two evaluations named {sorted(n for n in names if names.count(n) > 1)[0]!r}")
