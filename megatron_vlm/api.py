"""Python API: one function per ``longvlm`` subcommand, taking the CLI options as keywords.

    from megatron_vlm import api
    api.pool(inputs=["pdfs/"], output="pool", min_pages=0)

Each function builds the stage's typed config dataclass (its fields are the CLI options, with the
same defaults) and runs the stage in-process. Stages that are not implemented yet raise
``NotImplementedError``.
"""

from __future__ import annotations

from typing import Any


def _not_implemented(name: str):
    def stage(**kwargs: Any) -> Any:
        raise NotImplementedError(f"longvlm {name}: not implemented yet")

    stage.__name__ = name
    stage.__doc__ = f"``longvlm {name}`` (not implemented yet)."
    return stage


def pool(**options: Any):
    """``longvlm pool``: build a document pool; returns a ``PoolSummary``.

    Keywords are the CLI options (``inputs``, ``output``, ``min_pages``, ...; see
    ``preprocess.pool.config.PoolConfig``). Read the result with ``preprocess.pool.Pool.open``.
    """
    from preprocess.pool.config import PoolConfig
    from preprocess.pool.run import run

    return run(PoolConfig(**options))


def synth(**options: Any):
    """``longvlm synth``: the five training tasks from a pool; returns a ``SynthResult``.

    Keywords are the CLI options (``pool``, ``output``, ``tasks``, ``generator``, ``per_doc``, ...;
    see ``preprocess.synth.config.SynthConfig``).
    """
    from preprocess.synth import SynthConfig, run_synth

    return run_synth(SynthConfig(**options))


def build(**options: Any):
    """``longvlm build``: options of ``preprocess.build.config.BuildConfig`` as keywords
    (``tasks``, ``pool``, ``tokenizer``, ``output`` required). Returns a ``BuildResult``
    (``prefix``, ``files``, ``report``); raises ``BuildError`` on bad input."""
    from preprocess.build.config import BuildConfig
    from preprocess.build.run import build as run_build

    if isinstance(options.get("tasks"), str):
        options["tasks"] = [options["tasks"]]
    return run_build(BuildConfig(**options))


def stats(**options: Any) -> dict:
    """``longvlm stats``: ``prefix`` (and ``plot``: a PNG path) -> the statistics dict
    (what ``--json`` prints)."""
    from preprocess.build.stats_cli import StatsConfig, run

    return run(StatsConfig(**options))


convert = _not_implemented("convert")
train = _not_implemented("train")
tune = _not_implemented("tune")
slurm = _not_implemented("slurm")
evaluate = _not_implemented("eval")
demo = _not_implemented("demo")
