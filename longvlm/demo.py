"""``longvlm demo``: the whole LongPT pipeline in miniature on one CPU, in a few minutes.

pool (real PDFs) -> synth (offline generator, all five tasks) -> build (packed, mixed dataset)
-> stats -> a tiny random checkpoint of the model family (``--family``: Qwen2.5-VL by default, or
Qwen3-VL) -> convert hf-to-megatron + verify -> ``longvlm train`` with the family's tiny CPU recipe
(``tiny-cpu`` / ``tiny-qwen3vl-cpu``; run directory ``train/``: metrics, loss curve, checkpoints)
-> convert megatron-to-hf -> the exported checkpoint loads in ``transformers`` and gives the trained
Megatron model's logits.

Every stage is the real one (the functions ``longvlm COMMAND`` runs), with small settings: low DPI,
short rows, a tiny model.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from megatron_vlm.errors import LongVLMError
from megatron_vlm.models.registry import DEFAULT_FAMILY, family_names
from megatron_vlm.utils.config_args import add_dataclass_arguments, dataclass_from_args

MARKER = ".longvlm-demo"
MAX_DEMO_TOKENS = 1e7  # more than the shipped PDFs give at 4 uses per sample
MAX_DEMO_STEPS = 10_000  # the demo trains 24 steps in about a minute
DEMO_PDFS = Path(__file__).resolve().parent / "demo_pdfs"  # shipped with the package (SOURCES.md there)


class DemoError(LongVLMError):
    """The demo cannot start (output directory, missing PDFs)."""


@dataclass
class DemoConfig:
    family: str = field(default=DEFAULT_FAMILY, metadata={
        "choices": family_names(), "help": "the model family the pipeline is run for (pool geometry, tokenizer, model)"})
    output: str = field(default="demo_out", metadata={
        "flag": "-o", "help": "working directory; a previous demo's directory there is replaced"})
    pdfs: str = field(default=str(DEMO_PDFS), metadata={
        "help": "folder of PDFs for the pool (12 real manuals shipped with longvlm, see its demo_pdfs/SOURCES.md)"})
    dpi: int = field(default=36, metadata={
        "help": "page render resolution (the recipe uses 144; 36 keeps CPU rows short)"})
    seq_length: int | None = field(default=None, metadata={"was": ("max_seq_len",), "help": (
        "packed row length of the dataset in tokens (default: 8192; --study: 4096)")})
    token_budget: float | None = field(default=None, metadata={"help": (
        "tokens in the built dataset (default: 1.2e5; --study: 4e4 per experiment)")})
    train_steps: int | None = field(default=None, metadata={"help": (
        "optimizer steps of the tiny-cpu recipe (default: 24; --study: 8 per experiment)")})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})
    study: list[str] | None = field(default=None, metadata={"metavar": "NAME", "help": (
        "instead of the pipeline: run these experiments of the paper's study (recipes/study/NAME.yaml, e.g. "
        "length-pool-native length-long-biased) in miniature with 'longvlm study', and write their report "
        "to OUTPUT/study/report.md/.csv/.png (docs/study.md)")})
    pool: str | None = field(default=None, metadata={"metavar": "POOL_DIR", "help": (
        "use this pool (written by 'longvlm pool') instead of pooling --pdfs")})

    def check(self) -> None:
        """Every option (after ``scaled``), before any stage runs (a bad one is not found after pool and synth)."""
        from megatron_vlm.utils.atomic import check_creatable
        from megatron_vlm.utils.checks import MAX_DPI, MAX_SEQ_LEN, check_number
        from preprocess.dataset.config import check_token_budget

        check_number("--dpi", self.dpi, ge=1, le=MAX_DPI, error=DemoError)
        check_number("--seq-length", self.seq_length, ge=1, le=MAX_SEQ_LEN, error=DemoError)
        check_token_budget(self.token_budget)
        check_number("--token-budget", self.token_budget, le=MAX_DEMO_TOKENS, error=DemoError)
        check_number("--train-steps", self.train_steps, ge=1, le=MAX_DEMO_STEPS, error=DemoError)
        check_number("--seed", self.seed, ge=0, error=DemoError)
        if self.pool is not None and not (Path(self.pool) / "manifest.jsonl").is_file():
            raise DemoError(f"--pool {self.pool}: not a pool (no manifest.jsonl); make one with 'longvlm pool'")
        if self.pool is None and not Path(self.pdfs).is_dir():
            raise DemoError(f"--pdfs {self.pdfs}: no such folder; pass a folder of PDFs")
        out = Path(self.output)
        if out.exists() and not out.is_dir():
            raise DemoError(f"-o {out}: is a file; choose a folder")
        check_creatable(out, "-o", DemoError)
        if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
            raise DemoError(f"-o {out}: exists and is not a demo directory; choose another -o")


# The scale of the pipeline demo and of an experiment in miniature (--study: several trainings, so smaller).
SCALE = {False: {"seq_length": 8192, "token_budget": 1.2e5, "train_steps": 24},
         True: {"seq_length": 4096, "token_budget": 4e4, "train_steps": 8}}


def scaled(config: DemoConfig) -> DemoConfig:
    """``config`` with the scale options it leaves unset filled in for its mode (pipeline or --study)."""
    defaults = SCALE[bool(config.study)]
    return replace(config, **{k: v for k, v in defaults.items() if getattr(config, k) is None})

@dataclass
class StageRecord:
    name: str
    seconds: float
    result: str


def _prepare_output(path: Path) -> None:
    if path.exists() and any(path.iterdir()):  # a demo directory (DemoConfig.check)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("written by longvlm demo; safe to delete\n")


def train(megatron_dir: Path, data_prefix: Path, run_dir: Path, steps: int, seed: int,
          family: str = DEFAULT_FAMILY) -> list[float]:
    """``longvlm train`` with the family's tiny CPU recipe on the demo's checkpoint and dataset; the step losses."""
    from megatron_vlm.models.registry import get_family
    from training.cli import recipe_path
    from training.config import load_recipe
    from training.metrics import read_metrics
    from training.trainer import train as run_training

    config = load_recipe(recipe_path(get_family(family).tiny_recipe), [
        f"model.checkpoint={megatron_dir}", f"data.train=[{{prefix: {data_prefix}}}]",
        f"train.train_steps={steps}", f"train.seed={seed}"])
    run_training(config, run_dir)
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split", "train") == "train"]


def compare_exported(hf_dir: Path, ckpt_dir: Path) -> float:
    """Max |logit| difference between ``transformers`` on the exported checkpoint and the Megatron
    model on the trained checkpoint, on the built-in multimodal probe of ``convert verify``."""
    from checkpoint_tools.config import VerifyConfig
    from checkpoint_tools.verify import verify

    result = verify(VerifyConfig(hf=str(hf_dir), ckpt=str(ckpt_dir), atol=1e-4))
    if not result.passed:
        raise DemoError(f"the exported checkpoint does not reproduce the trained model: {result.summary()}")
    return result.max_abs_diff


def _stage_runner(records: list[StageRecord]):
    def stage(name: str, fn, describe):
        print(f"\n== {name}", flush=True)
        start = time.perf_counter()
        value = fn()
        records.append(StageRecord(name, time.perf_counter() - start, describe(value)))
        print(f"   {records[-1].result}", flush=True)
        return value
    return stage


def _pool(config: DemoConfig, out: Path, stage) -> Path:
    """The demo's pool: --pool as given, else the --pdfs pooled at --dpi into OUTPUT/pool."""
    from preprocess.pool.config import PoolConfig
    from preprocess.pool.run import run as run_pool

    if config.pool:
        return Path(config.pool)
    stage("pool", lambda: run_pool(PoolConfig(inputs=[config.pdfs], output=str(out / "pool"), min_pages=0,
                                              max_pages=0, dpi=config.dpi, family=config.family, progress=False)),
          lambda r: f"{r.accepted} documents, {r.pages} pages, {r.image_tokens:,} image tokens")
    return out / "pool"


def run_study_demo(config: DemoConfig) -> list[StageRecord]:
    """``--study NAME...``: the experiments in miniature through ``longvlm study``, then their report."""
    from launch.study.miniature import experiment_file, miniature_file, write_short_data
    from launch.study.report import report
    from launch.study.run import run_experiments
    from megatron_vlm.formats.tasks import TASK_KINDS
    from megatron_vlm.models.registry import get_family
    from megatron_vlm.tokenizer import write_offline_tokenizer
    from preprocess.synth import SynthConfig, run_synth

    out = Path(config.output)
    config.check()
    for name in config.study:
        experiment_file(name)  # an unknown name fails before anything is written
    _prepare_output(out)
    records: list[StageRecord] = []
    stage = _stage_runner(records)
    pool = _pool(config, out, stage)
    tokenizer = write_offline_tokenizer(out / "tokenizer", config.family)
    hf = get_family(config.family).save_tiny_checkpoint(out / "hf_tiny", seed=config.seed)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(tokenizer / name, hf / name)
    short = stage("short data", lambda: write_short_data(pool, out / "short_data"),
                  lambda p: f"LLaVA-style instruction data from the pool's pages in {p.relative_to(out)}")
    questions = out / "eval_tasks.jsonl"
    single_page = next(k.name for k in TASK_KINDS.values() if k.category == "vqa" and k.evidence_pages == (1, 1))
    stage("eval questions", lambda: run_synth(SynthConfig(pool=str(pool), output=str(questions), tasks=single_page,
                                                          per_task=2, seed=config.seed + 1, progress=False)),
          lambda r: f"{r.accepted} held-out questions (docqa by teacher forcing)")
    inputs = {"pool": str(Path(pool).resolve()), "tokenizer": str(tokenizer.resolve()), "base_model": str(hf.resolve()),
              "data": {"short_instruct": str(short.resolve())}}
    files = [str(miniature_file(name, out / "study" / "experiments", inputs=inputs, eval_tasks=questions.resolve(),
                                seq_length=config.seq_length, token_budget=config.token_budget,
                                train_steps=config.train_steps, seed=config.seed)) for name in config.study]
    for result in run_experiments(files, [], out / "study", log=lambda line: print(line, flush=True)):
        records.append(StageRecord(f"{result.experiment}: {result.stage}", result.seconds,
                                   f"{result.status} artifact {result.key}"))
    table = stage("study report", lambda: report(files, [], out / "study", out / "study" / "report"),
                  lambda r: "study/report.md, study/report.csv, study/report.png")
    print("\n" + table["files"]["markdown"].read_text(), flush=True)
    return records


def run_demo(config: DemoConfig) -> list[StageRecord]:
    """Run every stage; returns one record per stage (printed as a table by the CLI)."""
    config = scaled(config)
    if config.study:
        return run_study_demo(config)
    from checkpoint_tools import engine
    from checkpoint_tools.config import HFToMegatronConfig, MegatronToHFConfig, VerifyConfig
    from checkpoint_tools.verify import verify
    from megatron_vlm.models.registry import get_family
    from megatron_vlm.tokenizer import write_offline_tokenizer
    from preprocess.dataset.config import BuildConfig
    from preprocess.dataset.run import build as build_dataset
    from preprocess.dataset.stats_cli import StatsConfig
    from preprocess.dataset.stats_cli import run as run_stats
    from preprocess.synth import SynthConfig, run_synth

    out = Path(config.output)
    config.check()
    _prepare_output(out)
    records: list[StageRecord] = []
    family = get_family(config.family)
    stage = _stage_runner(records)
    pool = _pool(config, out, stage)
    stage("synth", lambda: run_synth(SynthConfig(pool=str(pool), output=str(out / "tasks.jsonl"),
                                                  per_doc=1, seed=config.seed, progress=False)),
          lambda r: f"{r.accepted} instances, {r.rejected} rejected (see tasks.summary.json)")
    tokenizer = write_offline_tokenizer(out / "tokenizer", family.model_type)
    build = stage("build", lambda: build_dataset(BuildConfig(
        tasks=[str(out / "tasks.jsonl")], pool=str(pool), tokenizer=str(tokenizer), family=family.model_type,
        output=str(out / "data" / "longpt"), seq_length=config.seq_length, token_budget=config.token_budget,
        seed=config.seed, progress=False)),
                  lambda r: f"{r.report['packing']['packs']} packed sequences of {r.report['packing']['samples']} samples, fill "
                            f"{r.report['packing']['fill_ratio']:.1%}")
    stage("stats", lambda: run_stats(StatsConfig(prefix=[str(build.prefix)], plot=str(out / "lengths.png"))),
          lambda s: f"{s['total_tokens']:,} tokens, histogram plot in lengths.png")
    hf = stage("tiny model", lambda: family.save_tiny_checkpoint(out / "hf_tiny", seed=config.seed),
               lambda p: f"random tiny {family.name} written to {p.name}/ (from a config, no download)")
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(tokenizer / name, hf / name)
    stage("convert hf-to-megatron", lambda: engine.hf_to_megatron(HFToMegatronConfig(hf=str(hf), out=str(out / "megatron"))),
          lambda r: r.summary())
    stage("convert verify", lambda: verify(VerifyConfig(hf=str(hf), ckpt=str(out / "megatron"))),
          lambda r: r.summary())
    stage("train", lambda: train(out / "megatron", build.prefix, out / "train", config.train_steps, config.seed,
                                 family.model_type),
          lambda losses: f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
                         "(train/metrics.jsonl, train/loss.png, train/checkpoints)")
    stage("convert megatron-to-hf", lambda: engine.megatron_to_hf(MegatronToHFConfig(
        ckpt=str(out / "train" / "checkpoints"), out=str(out / "hf_trained"), hf_template=str(hf))),
          lambda r: r.summary())
    stage("exported == trained", lambda: compare_exported(out / "hf_trained", out / "train" / "checkpoints"),
          lambda diff: f"transformers on hf_trained/ matches the trained Megatron model: max |dlogit| {diff:.2g}")
    return records


def format_records(records: list[StageRecord]) -> str:
    width = max(len(r.name) for r in records)
    lines = [f"{'stage':<{width}}  {'seconds':>7}  result", f"{'-' * width}  {'-' * 7}  {'-' * 6}"]
    lines += [f"{r.name:<{width}}  {r.seconds:7.1f}  {r.result}" for r in records]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the whole LongPT pipeline in miniature on one CPU: pool -> synth -> build -> stats -> "
        "convert -> longvlm train (the family's tiny CPU recipe) -> export to Hugging Face. Takes a few minutes; outputs "
        "stay in -o for inspection (see docs/demo.md).")
    add_dataclass_arguments(parser, DemoConfig)


def interrupted(args: argparse.Namespace) -> str:
    return (f"the stages finished so far are in {args.output}/ (each output whole or absent); rerun "
            "'longvlm demo' to start over")


def main(args: argparse.Namespace) -> int:
    config = scaled(dataclass_from_args(DemoConfig, args))
    print("longvlm demo: " + ", ".join(f"{k}={v}" for k, v in asdict(config).items()))
    records = run_demo(config)
    print("\n" + format_records(records))
    print(f"\nEverything is in {config.output}/. Next: point 'longvlm pool' at your PDFs (docs/pool.md).")
    return 0

