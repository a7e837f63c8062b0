"""``longvlm train RECIPE [key=value ...] [-o RUN_DIR] [--print-config]``."""

from __future__ import annotations

import argparse
from pathlib import Path

RECIPES = Path(__file__).resolve().parent / "recipes"


def recipe_path(name: str) -> Path:
    """A recipe file, or the name of a built-in one (``tiny-cpu``, ``mmprolong-7b-128k``)."""
    path = Path(name)
    if not path.exists() and (RECIPES / f"{name}.yaml").is_file():
        return RECIPES / f"{name}.yaml"
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    builtin = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    parser.description = (
        "Continue-pretrain Qwen2.5-VL with Megatron-Core: TP/PP/CP/DP/SP, fp32/bf16/fp8, exact resume. "
        "Start one process with `longvlm train ...`, several with `torchrun --nproc-per-node N -m longvlm "
        "train ...` or `srun` (one task per GPU). Rerunning on a run directory resumes it.")
    parser.epilog = (f"Built-in recipes: {builtin} (training/recipes/). Every key of a recipe, with its "
                     "default, is in docs/training.md; `--print-config` shows the resolved config.")
    parser.add_argument("recipe", metavar="RECIPE", help="a recipe YAML file or a built-in recipe's name")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides of recipe keys, e.g. optimizer.lr=2e-5 parallel.tp=4 train.train_steps=100")
    parser.add_argument("-o", "--output", metavar="RUN_DIR",
                        help="run directory (default: runs/RECIPE_NAME); rerun on it to resume")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def main(args: argparse.Namespace) -> int:
    from training.config import load_recipe, to_yaml

    path = recipe_path(args.recipe)
    config = load_recipe(path, args.overrides)
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    check_demo_paths(path, config)
    from training.trainer import train

    return train(config, args.output or Path("runs") / path.stem)


def check_demo_paths(path: Path, config) -> None:
    """A tiny demo recipe reads ``longvlm demo``'s output by relative paths: run elsewhere, say where it
    looked and how to point it at a demo written with ``-o X``."""
    from megatron_vlm.models.registry import families
    from training.config import RecipeError

    if path.parent != RECIPES or path.stem not in {f.tiny_recipe for f in families()}:
        return
    checkpoint = Path(config.model.checkpoint)
    if checkpoint.is_absolute() or checkpoint.exists():
        return
    raise RecipeError(
        f"model.checkpoint={checkpoint}: not found in {Path.cwd()} ({checkpoint.resolve()}). The {path.stem} recipe "
        f"reads the output of 'longvlm demo' by paths relative to the folder the demo ran in: run it there, or for "
        f"'longvlm demo -o X' give: longvlm train {path.stem} model.checkpoint=X/hf_tiny "
        f"'data.train=[{{prefix: X/data/longpt}}]'")
