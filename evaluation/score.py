"""``longvlm eval score PREDICTIONS.jsonl``: MMLongBench-Doc scoring of existing predictions (no model)."""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.config import EvalError, ScoreConfig
from evaluation.scoring import ANSWER_FORMATS, parse_list, score_answer, summarize
from megatron_vlm.utils.atomic import atomic_write
from megatron_vlm.utils.jsonl import read_jsonl_objects

REQUIRED = ("question", "answer", "answer_format", "prediction")
_GROUP_TITLES = {"by_answer_format": "answer format", "by_evidence": "evidence", "by_evidence_pages":
                 "evidence pages", "by_evidence_source": "evidence source", "by_doc_type": "document type",
                 "by_task": "task", "by_context_length": "context length"}


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a predictions file, checked: each names its line when something is missing."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: predictions file not found")
    rows = []
    for where, _, row in read_jsonl_objects(path, EvalError):
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise EvalError(f"{where}: missing {', '.join(repr(k) for k in missing)} (a prediction row needs "
                            f"{', '.join(REQUIRED)})")
        if row["answer_format"] not in ANSWER_FORMATS:
            raise EvalError(f"{where}: answer_format {row['answer_format']!r} is not one of "
                            f"{', '.join(ANSWER_FORMATS)}")
        if row["prediction"] is not None and not isinstance(row["prediction"], str):
            raise EvalError(f"{where}: 'prediction' must be a string (the model's output)")
        for key in ("evidence_pages", "evidence_sources"):  # MMLongBench-Doc writes them as "[3, 5]"
            if isinstance(row.get(key), str):
                items = parse_list(row[key]) if row[key].strip() else []
                if items is None:
                    raise EvalError(f"{where}: '{key}' must be a list such as [3, 5], got {row[key]!r}")
                row[key] = items
        if isinstance(row.get("evidence_pages"), list):
            try:
                row["evidence_pages"] = [int(p) for p in row["evidence_pages"]]
            except (TypeError, ValueError):
                raise EvalError(f"{where}: 'evidence_pages' must hold page numbers, got {row['evidence_pages']!r}") from None
        rows.append(row)
    return rows


def score_rows(rows: list[dict]) -> list[dict]:
    return [{**row, "score": score_answer(row["answer"], row["prediction"], row["answer_format"])} for row in rows]


def format_summary(summary: dict) -> str:
    """A summary of ``evaluation.scoring.summarize`` (or teacher-forcing figures) as text tables."""
    if "acc" not in summary:
        lines = [f"teacher forcing over {summary['n']} examples: answer log-likelihood per token "
                 f"{_num(summary.get('answer_logprob_per_token'))}, answer token accuracy "
                 f"{_num(summary.get('answer_token_accuracy'))}"]
    else:
        lines = [f"Acc {summary['acc']:.4f}  F1 {summary['f1']:.4f}  over {summary['n']} questions", ""]
        if "slidevqa" in summary:
            lines[1:1] = [f"SlideVQA QA: F1 {summary['slidevqa']['f1']:.4f}  EM {summary['slidevqa']['exact_match']:.4f}"]
        for key, title in _GROUP_TITLES.items():
            groups = summary.get(key)
            if not groups:
                continue
            width = max(len(title), *(len(k) for k in groups))
            lines.append(f"{title:<{width}}  {'n':>5}  {'acc':>6}  {'f1':>6}")
            lines += [f"{k:<{width}}  {g['n']:>5}  {g['acc']:>6.3f}  {g['f1']:>6.3f}" for k, g in groups.items()]
            lines.append("")
    if "page_markers" in summary:
        lines.append(f"page markers: {'on' if summary['page_markers'] else 'off'}; truncated documents: "
                     f"{summary['truncated']} (evidence pages dropped in {summary['evidence_dropped']})")
    return "\n".join(lines).rstrip()


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def run(config: ScoreConfig) -> dict:
    """Score the file; writes the scored rows to ``config.output`` if given; returns the summary."""
    rows = score_rows(read_predictions(config.predictions))
    if config.output:
        with atomic_write(config.output) as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return summarize(rows)
