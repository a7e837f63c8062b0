"""``longvlm study report FILE...``: the experiments side by side, one row each: the data statistics of
what each trained on (from the built dataset's files, ``longvlm stats``) and its evaluation scores
(from each evaluation's ``results.json``); written as Markdown and CSV, and one figure (length
distributions of the data beside the scores)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from launch.study.experiment import StudyError, load_experiment
from launch.study.plan import plan


def _eval_figures(name: str, task: str, summary: dict) -> dict[str, float | None]:
    """The headline figure(s) of one evaluation's summary: the paper's columns where there are several."""
    if task == "niah":
        return {f"{name} score": summary.get("overall")}
    if task == "mmniah":
        return {f"{name} score": summary.get("score")}
    if "acc" not in summary:  # docqa by teacher forcing
        return {f"{name} answer log-lik/token": summary.get("answer_logprob_per_token")}
    figures = {f"{name} acc": summary["acc"]}
    if "slidevqa" in summary:
        figures = {f"{name} F1": summary["slidevqa"]["f1"], f"{name} EM": summary["slidevqa"]["exact_match"]}
    for length, group in (summary.get("by_context_length") or {}).items():
        figures[f"{name} acc@{length}"] = group["acc"]
    return figures


def collect(files: list[str], overrides: list[str], work: str | Path) -> list[dict]:
    """Per experiment: its name, paper section, data statistics and evaluation figures (None where a
    stage has not finished)."""
    from preprocess.dataset.stats import dataset_stats

    work = Path(work).resolve()
    rows = []
    for file in files:
        experiment = load_experiment(file, overrides)
        steps = {s.stage: s for s in plan(experiment, work)}
        build = steps["build"]
        stats = dataset_stats(build.options["output"]) if build.done(work) else None
        evals = {}
        for spec in experiment.eval:
            step = steps[f"eval-{spec.name}"]
            results = step.directory(work) / "results" / "results.json"
            if step.done(work) and results.is_file():
                evals.update(_eval_figures(spec.name, spec.task, json.loads(results.read_text())["summary"]))
            else:
                evals[f"{spec.name}"] = None
        rows.append({"name": experiment.name, "paper": experiment.paper, "stats": stats, "evals": evals,
                     "build": experiment.build, "done": {s: st.done(work) for s, st in steps.items()}})
    return rows


def table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Header and rows (numbers, None where missing) of the comparison."""
    tasks = list(dict.fromkeys(t for r in rows if r["stats"] for t in r["stats"]["tasks"]))
    evals = list(dict.fromkeys(k for r in rows for k in r["evals"]))
    header = ["experiment", "paper", "length dist", "examples", "tokens", "mean len", "p50 len", "p90 len",
              "long share", *(f"{t} share" for t in tasks), *evals]
    out = []
    for r in rows:
        s = r["stats"]
        data = [None] * (8 + len(tasks)) if s is None else [
            s["length_dist"], s["samples"], s["total_tokens"], round(s["mean_length"]), s["p50"], s["p90"],
            s["long_share"], *(s["tasks"].get(t, {}).get("token_share", 0.0) for t in tasks)]
        out.append([r["name"], r["paper"], *data, *(r["evals"].get(k) for k in evals)])
    return header, out


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}" if 0 <= value <= 1 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def figure(rows: list[dict], path: Path) -> None:
    """Left: each experiment's share of examples per length bin (its dataset's own bins); right: the
    evaluation figures, one group of bars per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from megatron_vlm.utils.atomic import atomic_write

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for r in rows:
        if r["stats"]:
            bins = r["stats"]["histogram"]
            left.plot(range(len(bins)), [100 * b["share"] for b in bins], marker="o", label=r["name"])
            left.set_xticks(range(len(bins)), [b["bin"] for b in bins], rotation=30, ha="right", fontsize=8)
    left.set_ylabel("% of examples")
    left.set_xlabel("sample length (tokens)")
    left.set_title("training data: length distribution", fontsize=10)
    left.legend(fontsize=8)
    keys = list(dict.fromkeys(k for r in rows for k, v in r["evals"].items() if v is not None))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        right.bar(np.arange(len(keys)) + i * width, [r["evals"].get(k) or 0.0 for k in keys], width, label=r["name"])
    right.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=30, ha="right", fontsize=8)
    right.set_title("evaluation", fontsize=10)
    if keys:
        right.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def report(files: list[str], overrides: list[str], work: str | Path, output: str | Path) -> dict:
    """Write ``OUTPUT.md``, ``OUTPUT.csv`` and ``OUTPUT.png``; returns the rows and the paths."""
    from megatron_vlm.utils.atomic import atomic_write

    if not files:
        raise StudyError("give the experiment files to compare")
    rows = collect(files, overrides, work)
    header, values = table(rows)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": output.with_suffix(".md"), "csv": output.with_suffix(".csv"), "figure": output.with_suffix(".png")}
    with atomic_write(paths["markdown"]) as f:
        f.write(markdown(header, values))
    with atomic_write(paths["csv"]) as f:
        f.write(to_csv(header, values))
    figure(rows, paths["figure"])
    return {"rows": rows, "header": header, "table": values, "files": paths}
