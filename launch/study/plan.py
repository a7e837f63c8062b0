"""The stages one experiment needs, each an artifact named by what makes it.

A step's key is a hash of its stage, its options (those that decide the output; paths of the study's
own artifacts replaced by their keys) and its inputs' fingerprints (the pool's, the tokenizer's and
base model's files, data files). Its output lives in ``WORK/STAGE/KEY/``; a ``done.json`` written
last marks it complete. Two experiments that need the same artifact get the same key, so it is made
once: a study of pool-native vs long-biased lengths synthesizes the tasks once and builds twice.

Stages, in order: ``synth`` -> ``build`` -> ``train`` (-> ``sft-build`` -> ``sft-train``) ->
``export`` (the trained checkpoint as Hugging Face, for evaluation) -> one ``eval-NAME`` per entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.study.experiment import Experiment, StudyError

DONE = "done.json"
KEY_CHARS = 16


@dataclass
class Step:
    stage: str  # synth | build | train | sft-build | sft-train | export | eval-NAME
    kind: str  # synth | build | train | export | eval
    key: str
    identity: dict  # what the key hashes (recorded in done.json)
    options: dict[str, Any]  # what the stage runs with (paths filled in)
    needs: list[str] = field(default_factory=list)  # stages this one reads

    def directory(self, work: Path) -> Path:
        return work / self.kind / self.key

    def done(self, work: Path) -> bool:
        return (self.directory(work) / DONE).is_file()


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:KEY_CHARS]


def files_fingerprint(path: str | Path, what: str) -> str:
    """A directory's or file's content fingerprint: names, sizes and sampled checksums of its files."""
    from megatron_vlm.formats.integrity import file_record

    path = Path(path)
    if path.is_file():
        return digest(file_record(path))
    if not path.is_dir():
        raise StudyError(f"{what} {path}: not found")
    return digest({str(p.relative_to(path)): file_record(p) for p in sorted(path.rglob("*")) if p.is_file()})


def pool_key(pool: str) -> str:
    from megatron_vlm.formats.pool import PoolFormatError, pool_fingerprint

    if not (Path(pool) / "manifest.jsonl").is_file():
        raise StudyError(f"inputs.pool {pool}: not a pool (no manifest.jsonl); make one with 'longvlm pool'")
    try:
        return pool_fingerprint(pool)
    except (PoolFormatError, OSError) as err:
        raise StudyError(f"inputs.pool {pool}: {err}") from None


def _build_options(experiment: Experiment, options: dict, tasks: Path, pool: str) -> tuple[dict, dict]:
    """(what the build runs with, what identifies it), checked by the build's own config."""
    from megatron_vlm.utils.config_args import dataclass_from_options
    from preprocess.dataset.config import BuildConfig

    full = {**options, "tasks": [str(tasks)], "pool": pool, "tokenizer": experiment.inputs.tokenizer,
            "output": "-", "progress": False}
    try:
        config = dataclass_from_options(BuildConfig, full)
    except (TypeError, ValueError) as err:
        raise StudyError(f"{experiment.file}: build: {err}") from None
    identity = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("tasks", "pool", "tokenizer", "output",
                                                                                 "progress", "workers")}
    identity["short_data"] = [files_fingerprint(p, "build.short_data") for p in config.short_data or []]
    return full, identity


def _train_identity(experiment: Experiment, spec, start: str, data: str, where: str) -> tuple[dict, dict]:
    from training.cli import recipe_path
    from training.config import RecipeError, load_recipe

    recipe = recipe_path(spec.recipe)
    overrides = [*spec.overrides, f"model.checkpoint={start}", f"data.train=[{{prefix: {data}}}]"]
    try:
        config = load_recipe(recipe, overrides)
    except RecipeError as err:
        raise StudyError(f"{experiment.file}: {where}: {err}") from None
    identity = dataclasses.asdict(config)
    identity["model"]["checkpoint"] = start
    identity["data"]["train"] = [dict(d, prefix=data) for d in identity["data"]["train"]]
    for key in ("num_workers",):
        identity["data"].pop(key, None)
    return {"recipe": str(recipe), "overrides": overrides}, identity


def plan(experiment: Experiment, work: Path) -> list[Step]:
    """Every step of the experiment, with its key and options, in the order they run."""
    from evaluation.config import NOT_IDENTITY
    from megatron_vlm.utils.config_args import dataclass_from_options
    from preprocess.synth.config import SynthConfig

    steps: list[Step] = []
    inputs = experiment.inputs
    pool_fp = pool_key(inputs.pool)
    tokenizer_fp = files_fingerprint(inputs.tokenizer, "inputs.tokenizer")

    synth_options = {**experiment.synth, "pool": inputs.pool, "output": "-", "progress": False}
    try:
        synth_config = dataclass_from_options(SynthConfig, synth_options)
        synth_config.validate()
    except (TypeError, ValueError) as err:
        raise StudyError(f"{experiment.file}: synth: {err}") from None
    synth_id = {"pool": pool_fp, "options": synth_config.content_options()}
    synth = Step("synth", "synth", digest(["synth", synth_id]), synth_id, synth_options)
    steps.append(synth)
    tasks = synth.directory(work) / "tasks.jsonl"

    def build_step(stage: str, options: dict) -> Step:
        full, identity = _build_options(experiment, options, tasks, inputs.pool)
        identity = {"synth": synth.key, "pool": pool_fp, "tokenizer": tokenizer_fp, "options": identity}
        step = Step(stage, "build", digest(["build", identity]), identity, full, ["synth"])
        step.options["output"] = str(step.directory(work) / "data")
        return step

    def train_step(stage: str, spec, build: Step, start: str, start_id: str, needs: list[str]) -> Step:
        data = build.options["output"]
        options, recipe = _train_identity(experiment, spec, start, data, stage)
        recipe["model"]["checkpoint"], recipe["data"]["train"] = start_id, build.key
        identity = {"recipe": recipe}
        step = Step(stage, "train", digest(["train", identity]), identity, options, needs)
        return step

    build = build_step("build", experiment.build)
    base_fp = files_fingerprint(inputs.base_model, "inputs.base_model")
    train = train_step("train", experiment.train, build, inputs.base_model, base_fp, ["build"])
    steps += [build, train]
    last = train
    if experiment.sft is not None:
        sft_build = build_step("sft-build", experiment.sft.build)
        checkpoints = str(train.directory(work) / "checkpoints")
        sft_train = train_step("sft-train", experiment.sft.train, sft_build, checkpoints, train.key,
                               ["train", "sft-build"])
        steps += [sft_build, sft_train]
        last = sft_train
    export_id = {"train": last.key, "base": base_fp}
    export = Step("export", "export", digest(["export", export_id]), export_id,
                  {"ckpt": str(last.directory(work) / "checkpoints"), "hf_template": inputs.base_model},
                  [last.stage])
    steps.append(export)
    for spec in experiment.eval:
        options = {**spec.options, "checkpoint": str(export.directory(work) / "hf")}
        options.setdefault("tokenizer", inputs.tokenizer)
        files = {k: files_fingerprint(v, f"eval {spec.name}: {k}") for k, v in spec.options.items()
                 if k in ("input", "pool", "pdf_dir", "image_dir") and isinstance(v, str)}
        if isinstance(spec.options.get("input"), list):
            files["input"] = [files_fingerprint(p, f"eval {spec.name}: input") for p in spec.options["input"]]
        identity = {"task": spec.task, "export": export.key, "files": files,
                    "options": {k: v for k, v in options.items()
                                if k not in ("checkpoint", "tokenizer", *NOT_IDENTITY)},
                    "tokenizer": tokenizer_fp}
        steps.append(Step(f"eval-{spec.name}", "eval", digest(["eval", identity]), identity,
                          {"task": spec.task, **options}, ["export"]))
    return steps
