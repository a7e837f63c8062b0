"""Running an evaluation task: build its requests, run what is not done yet, score, summarize, write.

Tasks are data in a registry (:data:`TASKS`), as in lm-evaluation-harness: a name, its config
class and the module that implements it. A task module provides::

    requests(config, builder, pool=None) -> list[Request]   # every example, built and measured
    score(request, output) -> dict                          # row fields from a backend's output
    summarize(rows, config) -> dict                         # the summary of finished rows
    report(summary) -> str                                  # the summary as text tables
    artifacts(summary, directory) -> list[Path]             # plots
    inputs(config) -> dict                                  # input files and their hashes
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from evaluation.backends import backend_class, make_backend
from evaluation.config import DocQAConfig, EvalError, MMNiahConfig, NiahConfig, identity
from evaluation.prompt import PromptBuilder
from evaluation.results import ResultStore, check_directory
from evaluation.rope import checkpoint_family, resolve_rope
from megatron_vlm import __version__


@dataclass(frozen=True)
class TaskSpec:
    name: str
    summary: str
    config: type
    module: str


TASKS = {
    "niah": TaskSpec("niah", "Multimodal needle-in-a-haystack in pool documents at 32K-512K tokens.",
                     NiahConfig, "evaluation.niah"),
    "docqa": TaskSpec("docqa", "Long-document VQA: MMLongBench-Doc, LongDocURL, SlideVQA, synth tasks, own JSONL.",
                      DocQAConfig, "evaluation.docqa"),
    "mmniah": TaskSpec("mmniah", "MM-NIAH (retrieval, counting, reasoning; text and image needles) from its files.",
                       MMNiahConfig, "evaluation.mmniah"),
}


@dataclass
class EvalResult:
    task: str
    directory: Path
    rows: list[dict]
    summary: dict
    report: str
    failed: int
    files: list[Path]


def load_tokenizer(options):
    """The tokenizer prompts are built and measured with (``--tokenizer``, else the checkpoint's own),
    checked as ``longvlm build`` checks it (a chat template that renders images)."""
    from preprocess.dataset.run import load_tokenizer as load_checked

    path = options.tokenizer or options.checkpoint
    if options.tokenizer is None and options.backend == "megatron":
        from evaluation.backends.megatron import checkpoint_tokenizer

        path = checkpoint_tokenizer(options.checkpoint)
        if path is None:
            raise EvalError(f"--checkpoint {options.checkpoint}: the HF directory it was converted from is gone; "
                            "pass --tokenizer DIR (the model's own tokenizer)")
    return load_checked(path)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"longvlm": __version__, "python": sys.version.split()[0]}
    for package in ("torch", "transformers"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return out


def _row(request, output: dict, task) -> dict:
    row = {"id": request.id, **request.meta, "answer": request.answer, "prompt_tokens": request.num_tokens,
           **output, **task.score(request, output)}
    return row


def run_task(name: str, config, pool=None, backend=None) -> EvalResult:
    """Run task ``name`` with its ``config``; ``pool`` / ``backend`` override opening them (tests)."""
    if name not in TASKS:
        raise EvalError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    spec = TASKS[name]
    task = importlib.import_module(spec.module)
    if backend is None:
        backend_class(config.backend)  # fail on a bad name before any work
    check_directory(config.output)
    if pool is None and getattr(config, "pool", None) is not None and not Path(config.pool).is_dir():
        raise EvalError(f"--pool {config.pool}: no such folder (a pool written by 'longvlm pool')")
    if backend is None and config.backend == "hf":  # every shard's header read: a damaged one named now
        from checkpoint_tools.hf_io import HFCheckpoint

        HFCheckpoint.open(config.checkpoint)
    rope = resolve_rope(config)
    builder = PromptBuilder(None, config.page_markers, checkpoint_family(config).geometry,
                            load=lambda: load_tokenizer(config))
    requests = task.requests(config, builder, pool)  # the task's inputs read and checked first
    builder.tokenizer  # noqa: B018 - loaded and checked (if the requests did not need it) before anything is written
    if config.limit is not None:
        requests = requests[: config.limit]
    from megatron_vlm.runtime import read_dist_env

    primary = read_dist_env().rank == 0  # a parallel backend (megatron) runs on every rank; rank 0 writes
    store = ResultStore(config.output, {"task": name, "config": identity(config), "rope": rope.to_json()}, primary)
    todo = [r for r in requests if not store.done(r.id)]
    previous = store.directory / "results.json"
    described = (json.loads(previous.read_text(encoding="utf-8")).get("backend") if previous.is_file()
                 else None) or {"name": config.backend}
    owned = backend is None and bool(todo)  # a backend made here is closed here
    try:
        if todo:
            backend = backend or make_backend(config, rope, builder, config.output)
            bar = tqdm(total=len(requests), initial=len(requests) - len(todo), desc=f"eval {name}", unit="example",
                       disable=not (config.progress and primary))
            with bar:
                for i, output in backend.run(todo, config.scoring):
                    if backend.primary:
                        store.add(_row(todo[i], output, task))
                    bar.update(1)
            described = backend.describe()
    finally:
        store.close()
        if owned and backend is not None:
            backend.close()
    if not primary:
        return EvalResult(name, store.directory, [], {}, "", 0, [])
    rows = [store.rows[r.id] for r in requests if r.id in store.rows]
    ok = [r for r in rows if "error" not in r]
    summary = task.summarize(ok, config)
    summary["failed"] = len(rows) - len(ok)
    mismatched = [r["id"] for r in ok if "server_prompt_tokens" in r and r["server_prompt_tokens"] != r["prompt_tokens"]]
    if mismatched:
        summary["server_prompt_tokens_differ"] = {"n": len(mismatched), "examples": mismatched[:5]}
    files = [store.directory / "results.jsonl"]
    if ok:
        files += task.artifacts(summary, store.directory)
    results = {
        "task": name,
        "config": dataclasses.asdict(config),
        "backend": described,
        "rope": rope.to_json(),
        "inputs": task.inputs(config),
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "examples": len(requests),
        "summary": summary,
    }
    files.append(store.write_summary(results))
    return EvalResult(name, store.directory, rows, summary, task.report(summary), summary["failed"], files)
