"""The run directory and the run's starting point, checked before any work.

``RUN_DIR/config.yaml`` is the resolved config (``longvlm train RUN_DIR/config.yaml -o NEW_DIR``
reruns it); ``RUN_DIR/init`` the Megatron conversion of an HF starting checkpoint (made once);
``RUN_DIR/checkpoints``, ``metrics.jsonl``, ``tensorboard/`` and ``loss.png`` are written by the
trainer. Rerunning on a run directory resumes it; the new config may change how the run runs
(layout, intervals, the step budget: ``RESUMABLE_CHANGES``), not what it computes.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from checkpoint_tools.hf_io import HFCheckpoint
from megatron_vlm.formats.checkpoint import TRACKER_NAME, MegatronCheckpoint
from megatron_vlm.models.hf_config import VLArch
from megatron_vlm.models.registry import read_arch
from megatron_vlm.utils.atomic import check_creatable
from training.config import RESUMABLE_CHANGES, RecipeError, TrainConfig, differences, load_recipe, to_yaml

CONFIG = "config.yaml"
INIT = "init"


@dataclass(frozen=True)
class StartPoint:
    """Where the weights come from: an HF directory (converted into ``RUN_DIR/init``) or a Megatron checkpoint."""

    path: Path
    kind: str  # "hf" or "megatron"
    arch: VLArch
    tokenizer_dir: str | None  # the model's own tokenizer files, if it has them
    source: dict  # the HF directory record exports copy side files from

    def megatron_dir(self, run_dir: Path) -> Path:
        return run_dir / INIT if self.kind == "hf" else self.path


def start_point(config: TrainConfig) -> StartPoint:
    """Read the starting checkpoint's config (no weights), or a ``RecipeError`` saying what is wrong."""
    path = Path(config.model.checkpoint)
    if not path.exists():
        raise RecipeError(f"model.checkpoint={path}: does not exist")
    try:
        if (path / TRACKER_NAME).is_file():
            ckpt = MegatronCheckpoint.open(path)
            source = ckpt.meta.get("source", {})
            hf_dir = source.get("hf_dir")
            arch = read_arch(ckpt.meta["hf_config"], name=str(ckpt.iter_dir / "longvlm.json"))
            return StartPoint(path, "megatron", arch, hf_dir if hf_dir and Path(hf_dir).is_dir() else None, source)
        if (path / "config.json").is_file():  # every shard's header read: a damaged one is named before any work
            arch = HFCheckpoint.open(path).arch
            return StartPoint(path, "hf", arch, str(path), {"hf_dir": str(path.resolve())})
    except RecipeError:
        raise
    except Exception as err:  # CheckpointError / ConfigError name the file
        raise RecipeError(f"model.checkpoint: {err}") from None
    raise RecipeError(f"model.checkpoint={path}: neither an HF model directory (config.json) nor a Megatron "
                      f"checkpoint ({TRACKER_NAME}); convert one with 'longvlm convert hf-to-megatron'")


def check_run_dir(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``run_dir`` holds this run already (a resume); an error if it holds something else or cannot be
    created."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RecipeError(f"-o {run_dir}: is a file, not a run directory; choose another")
    check_creatable(run_dir, "-o", RecipeError)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return False
    saved = run_dir / CONFIG
    if not saved.is_file():
        raise RecipeError(f"-o {run_dir}: exists and is not a run directory (no {CONFIG}); choose another")
    old = load_recipe(saved)
    changed = differences(old, config)
    fixed = {k: v for k, v in changed.items() if not k.startswith(RESUMABLE_CHANGES)}
    if fixed:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in fixed.items())
        raise RecipeError(f"-o {run_dir} holds a run with another config ({listed}); resume it with its own "
                          f"config ({saved}) or start a new run with another -o")
    return True


def write_config(run_dir: Path, config: TrainConfig) -> None:
    from megatron_vlm.utils.atomic import atomic_write

    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(run_dir / CONFIG) as f:
        f.write(to_yaml(config))


def _convert(hf: str, out: str) -> None:
    from checkpoint_tools.config import HFToMegatronConfig
    from checkpoint_tools.engine import hf_to_megatron

    hf_to_megatron(HFToMegatronConfig(hf=hf, out=out))


def convert_start(start: StartPoint, run_dir: Path) -> None:
    """Convert an HF starting checkpoint into ``RUN_DIR/init`` once, in a fresh process (its own
    one-rank process group, not this job's); nothing to do for a Megatron one or a complete ``init``."""
    out = run_dir / INIT
    if start.kind != "hf" or (out / TRACKER_NAME).is_file():
        return
    print(f"converting {start.path} into {out} (once per run)", flush=True)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_convert, str(start.path), str(out)).result()
