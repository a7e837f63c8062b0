"""``longvlm eval docqa``: long-document VQA in the MMLongBench-Doc style.

Three inputs are read as they are (``--input-format auto`` tells them apart):

- ``jsonl``: one object per line, ``doc`` (a PDF path, relative to ``--pdf-dir`` or the file's
  folder, or a doc id of ``--pool``), ``question``, ``answer``; optional ``answer_format`` (``Int``,
  ``Float``, ``Str``, ``List``, ``None``; default ``Str``), ``evidence_pages``, ``id``,
  ``evidence_sources``, ``doc_type``;
- ``tasks``: a TASKS.jsonl of ``longvlm synth`` (``doc_id`` in ``--pool``; answers scored as ``Str``,
  results also per ``task``);
- ``mmlongbench``: MMLongBench-Doc's ``samples.json`` (a JSON list; ``doc_id`` = a PDF file name in
  ``--pdf-dir``; ``evidence_pages`` / ``evidence_sources`` as strings such as ``"[3, 5]"``);
- ``longdocurl``: LongDocURL's ``LongDocURL.jsonl`` (``question_id``, ``doc_no`` = the PDF
  ``DOC_NO.pdf`` in ``--pdf-dir`` or its ``NNNN-NNNN/`` subfolder, ``answer_format`` ``Integer`` /
  ``Float`` / ``String`` / ``List`` / ``None``, ``task_tag``); results per task tag;
- ``slidevqa``: a SlideVQA annotation JSONL (``deck_name``, ``qa_id``, ``evidence_pages``, ...;
  the deck's slide images in ``--image-dir/DECK_NAME/``, ordered by their slide number); scored by
  SlideVQA's QA F1 and exact match (``evaluation/benchmarks.py``).

The whole document is the context, rendered like the pool (``--dpi``, default 144); with
``--max-context`` (or each of ``--context-lengths``) a longer prompt drops pages (from the end, or the
middle) and the kept pages keep their numbers. The question (plus ``--instruction``) follows the
pages, as in training.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.benchmarks import LONGDOCURL_FORMATS, slidevqa_f1_em
from evaluation.config import SHORT_ANSWER_INSTRUCTION, DocQAConfig, EvalError, parse_length
from evaluation.pages import ImagePage, Page, PdfPage, PoolPage
from evaluation.prompt import Context, PromptBuilder, Request
from evaluation.scoring import ANSWER_FORMATS, parse_list, score_answer
from evaluation.scoring import summarize as summarize_answers
from megatron_vlm.utils.jsonl import parse_json, read_jsonl_objects


@dataclass
class Question:
    """One question of the input, with where it came from (``where``: FILE:LINE or FILE[INDEX])."""

    id: str
    doc: str
    question: str
    answer: str
    answer_format: str
    evidence_pages: list[int]
    where: str
    extra: dict = field(default_factory=dict)  # evidence_sources, doc_type, task, benchmark


def _pages_list(value, where: str, key: str) -> list[int]:
    items = value if isinstance(value, list) else parse_list(value) if value not in (None, "") else []
    if items is None:
        raise EvalError(f"{where}: '{key}' must be a list of page numbers such as [3, 5], got {value!r}")
    try:
        return sorted(int(v) for v in items)
    except (TypeError, ValueError):
        raise EvalError(f"{where}: '{key}' must hold page numbers, got {value!r}") from None


def _text(obj: dict, key: str, where: str, required: bool = True) -> str | None:
    if key not in obj:
        if required:
            raise EvalError(f"{where}: missing key '{key}'")
        return None
    value = obj[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        return json.dumps(value)
    if not isinstance(value, str):
        raise EvalError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return value


def _question(obj: dict, where: str, doc_key: str, default_format: str | None = None,
              formats: dict[str, str] | None = None, id_key: str = "id") -> Question:
    doc = _text(obj, doc_key, where)
    question = _text(obj, "question", where)
    answer = _text(obj, "answer", where)
    answer_format = default_format or _text(obj, "answer_format", where, required=False) or "Str"
    if formats is not None:
        if answer_format not in formats:
            raise EvalError(f"{where}: answer_format {answer_format!r} is not one of {', '.join(formats)}")
        answer_format = formats[answer_format]
    if answer_format not in ANSWER_FORMATS:
        raise EvalError(f"{where}: answer_format {answer_format!r} is not one of {', '.join(ANSWER_FORMATS)}")
    extra = {}
    sources = obj.get("evidence_sources")
    if sources not in (None, ""):
        parsed = sources if isinstance(sources, list) else parse_list(sources)
        extra["evidence_sources"] = [str(sources)] if parsed is None else [str(v) for v in parsed]
    for key in ("doc_type", "task"):
        if obj.get(key):
            extra[key] = str(obj[key])
    qid = str(obj.get(id_key) or hashlib.sha256(f"{doc}\n{question}\n{answer}".encode()).hexdigest()[:16])
    return Question(qid, doc, question, answer, answer_format,
                    _pages_list(obj.get("evidence_pages"), where, "evidence_pages"), where, extra)


def detect_format(path: Path) -> str:
    """``mmlongbench`` (a JSON list), ``tasks`` (synth lines) or ``jsonl`` (lines with ``doc``)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.lstrip().startswith(b"["):
        return "mmlongbench"
    first = next((line for line in head.splitlines() if line.strip()), b"")
    try:
        obj = parse_json(first, f"{path}:1", EvalError)
    except EvalError:
        raise EvalError(f"{path}:1: neither a JSON list (samples.json) nor JSON lines") from None
    if isinstance(obj, dict) and "deck_name" in obj:
        return "slidevqa"
    if isinstance(obj, dict) and "doc_no" in obj:
        return "longdocurl"
    if isinstance(obj, dict) and "doc" in obj:
        return "jsonl"
    if isinstance(obj, dict) and "doc_id" in obj and "task" in obj:
        return "tasks"
    raise EvalError(f"{path}:1: cannot tell the format (a line needs 'doc', 'doc_id' and 'task', 'deck_name' "
                    "or 'doc_no'); "
                    "pass --input-format")


def read_questions(path: str | Path, input_format: str = "auto") -> tuple[str, list[Question]]:
    """The input's format and its questions (ids made unique)."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: {'a folder, not the' if path.is_dir() else 'no such'} input file")
    fmt = detect_format(path) if input_format == "auto" else input_format
    questions: list[Question] = []
    if fmt == "mmlongbench":
        samples = parse_json(path.read_bytes(), str(path), EvalError)
        if not isinstance(samples, list):
            raise EvalError(f"{path}: MMLongBench-Doc's samples.json is a JSON list of samples")
        for i, obj in enumerate(samples):
            if not isinstance(obj, dict):
                raise EvalError(f"{path}[{i}]: expected a JSON object")
            questions.append(_question(obj, f"{path}[{i}]", "doc_id"))
    else:
        for where, _, obj in read_jsonl_objects(path, EvalError):
            if fmt == "tasks":
                questions.append(_question(obj, where, "doc_id", default_format="Str"))
            elif fmt == "slidevqa":
                q = _question(obj, where, "deck_name", default_format="Str", id_key="qa_id")
                q.extra.update(benchmark="slidevqa", task=str(obj.get("reasoning_type") or "-"))
                questions.append(q)
            elif fmt == "longdocurl":
                q = _question(obj, where, "doc_no", formats=LONGDOCURL_FORMATS, id_key="question_id")
                q.extra.update(benchmark="longdocurl", task=str(obj.get("task_tag") or "-"))
                questions.append(q)
            else:
                questions.append(_question(obj, where, "doc"))
    seen: dict[str, int] = {}
    for q in questions:
        n = seen.get(q.id, 0)
        seen[q.id] = n + 1
        if n:
            q.id = f"{q.id}#{n}"
    if not questions:
        raise EvalError(f"{path}: no questions")
    return fmt, questions


class Documents:
    """Each document's pages (pool pages or rendered PDF pages), resolved once."""

    def __init__(self, config: DocQAConfig, geometry, pool=None):
        self.config = config
        self.geometry = geometry  # the model family's
        self.pool = pool
        if pool is None and config.pool:
            from megatron_vlm.formats.pool import Pool, PoolFormatError

            try:
                self.pool = Pool.open(config.pool)
            except PoolFormatError as err:
                raise EvalError(f"--pool {config.pool}: {err}") from None
        self.pdf_dir = Path(config.pdf_dir) if config.pdf_dir else Path(config.input).parent
        self.image_dir = Path(config.image_dir) if config.image_dir else Path(config.input).parent
        self._pages: dict[str, list[Page]] = {}
        self.sources: dict[str, str] = {}

    def pages(self, q: Question) -> list[Page]:
        if q.doc not in self._pages:
            self._pages[q.doc] = self._resolve(q)
        return self._pages[q.doc]

    def _deck(self, q: Question) -> list[Page]:
        """A SlideVQA deck: its slide images, in slide-number order."""
        folder = self.image_dir / q.doc
        images = sorted((p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
                        key=lambda p: [int(n) for n in re.findall(r"\d+", p.stem)] or [0])
        if not images:
            raise EvalError(f"{q.where}: no slide images in {folder} (pass --image-dir, the folder of the decks)")
        try:
            pages = [ImagePage.of(p, self.geometry, self.config.min_pixels, self.config.max_pixels) for p in images]
        except ValueError as err:
            raise EvalError(f"{q.where}: {err}") from None
        self.sources[q.doc] = str(folder)
        return pages

    def _pdf_path(self, q: Question) -> Path:
        path = Path(q.doc)
        if q.extra.get("benchmark") == "longdocurl":  # DOC_NO.pdf, flat or in the release's 4000-4999/ folders
            flat = self.pdf_dir / f"{q.doc}.pdf"
            group = int(q.doc[:4]) // 1000 * 1000 if q.doc[:4].isdigit() else 0
            nested = self.pdf_dir / f"{group}-{group + 999}" / f"{q.doc}.pdf"
            return nested if nested.is_file() and not flat.is_file() else flat
        return path if path.is_absolute() else self.pdf_dir / path

    def _resolve(self, q: Question) -> list[Page]:
        if q.extra.get("benchmark") == "slidevqa":
            return self._deck(q)
        if self.pool is not None and q.doc in self.pool:
            doc = self.pool.get(q.doc)
            self.sources[q.doc] = f"pool:{q.doc}"
            return [PoolPage.of(self.pool, doc, n, self.geometry) for n in range(1, doc["num_pages"] + 1)]
        path = self._pdf_path(q)
        if not path.is_file():
            hint = "" if self.pool is not None else " (a doc id needs --pool)"
            raise EvalError(f"{q.where}: document {q.doc!r} is neither a doc id of the pool nor a PDF "
                            f"({path} not found){hint}")
        try:
            pages = PdfPage.document(path, self.config.dpi, self.geometry, self.config.min_pixels,
                                     self.config.max_pixels)
        except ValueError as err:
            raise EvalError(f"{q.where}: {err}") from None
        except RuntimeError as err:  # PyMuPDF: not a PDF, damaged
            raise EvalError(f"{q.where}: cannot open {path} as a PDF ({err})") from None
        if not pages:
            raise EvalError(f"{q.where}: {path} has no pages")
        self.sources[q.doc] = str(path)
        return pages


def keep_pages(n: int, kept: int, side: str) -> list[int]:
    """Indices of the ``kept`` pages left of ``n``: the first ones, or the first and last ones."""
    if side == "end":
        return list(range(kept))
    head = (kept + 1) // 2
    return list(range(head)) + list(range(n - (kept - head), n))


def truncated(builder: PromptBuilder, question: str, pages: list[Page], limit: int, side: str) -> Context:
    """The context with the most pages whose prompt fits ``limit`` tokens (binary search on the count)."""
    def context(kept: int) -> Context:
        idx = keep_pages(len(pages), kept, side)
        return Context([pages[i] for i in idx], [i + 1 for i in idx])

    lo, hi = 0, len(pages)  # lo fits (or is 0), hi is the candidate
    if builder.count(question, context(hi)) <= limit:
        return context(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if builder.count(question, context(mid)) <= limit:
            lo = mid
        else:
            hi = mid
    return context(lo)


def instruction_of(config: DocQAConfig, input_format: str) -> str:
    if config.instruction is not None:
        return config.instruction
    return SHORT_ANSWER_INSTRUCTION if input_format == "mmlongbench" else ""


def requests(config: DocQAConfig, builder: PromptBuilder, pool=None) -> list[Request]:
    fmt, questions = read_questions(config.input, config.input_format)
    instruction = instruction_of(config, fmt)
    docs = Documents(config, builder.geometry, pool)
    if config.context_lengths:  # every question at each length (the paper's columns)
        limits = [(parse_length(v, "context-lengths"), str(v)) for v in config.context_lengths]
    else:
        limits = [(parse_length(config.max_context, "max-context") if config.max_context else None, None)]
    out = []
    for q in questions:
        text = f"{q.question}\n{instruction}" if instruction else q.question
        if builder.has_special_text(text):
            raise EvalError(f"{q.where}: the question spells a special token of the tokenizer")
        pages = docs.pages(q)
        for limit, label in limits:
            context = (truncated(builder, text, pages, limit, config.truncate) if limit
                       else Context(pages, list(range(1, len(pages) + 1))))
            kept = set(context.page_numbers)
            meta = {"doc": q.doc, "question": q.question, "answer_format": q.answer_format,
                    "evidence_pages": q.evidence_pages, **q.extra, "pages": len(context.pages),
                    "pages_dropped": len(pages) - len(context.pages),
                    "evidence_dropped": [p for p in q.evidence_pages if p not in kept]}
            if label is not None:
                meta["context_length"] = label
            out.append(builder.build(q.id if label is None else f"{q.id}@{label}", text, q.answer, context, meta))
    return out


def score(request: Request, output: dict) -> dict:
    if "prediction" not in output:
        return {}
    if request.meta.get("benchmark") == "slidevqa":
        f1, em = slidevqa_f1_em(request.answer, output["prediction"], request.meta["question"])
        return {"score": f1, "exact_match": em}
    return {"score": score_answer(request.answer, output["prediction"], request.meta["answer_format"])}


def summarize(rows: list[dict], config: DocQAConfig) -> dict:
    if config.scoring == "generate":
        summary = summarize_answers(rows)
    else:
        n = len(rows)
        tokens = sum(r["answer_tokens"] for r in rows)
        summary = {"n": n,
                   "answer_logprob_per_token": sum(r["answer_logprob"] for r in rows) / tokens if tokens else None,
                   "answer_token_accuracy": sum(r["answer_token_accuracy"] * r["answer_tokens"] for r in rows) / tokens
                   if tokens else None}
    if config.scoring == "generate" and rows and all(r.get("benchmark") == "slidevqa" for r in rows):
        summary["slidevqa"] = {"f1": sum(r["score"] for r in rows) / len(rows),
                               "exact_match": sum(r["exact_match"] for r in rows) / len(rows)}
    summary["page_markers"] = config.page_markers
    summary["truncated"] = sum(1 for r in rows if r.get("pages_dropped"))
    summary["evidence_dropped"] = sum(1 for r in rows if r.get("evidence_dropped"))
    return summary


def report(summary: dict) -> str:
    from evaluation.score import format_summary

    return format_summary(summary)


def artifacts(summary: dict, directory: Path) -> list[Path]:
    return []


def inputs(config: DocQAConfig) -> dict:
    from megatron_vlm.formats.pool import pool_fingerprint
    from megatron_vlm.utils.hashing import sha256_file

    out = {"input": {"path": str(Path(config.input).absolute()), "sha256": sha256_file(config.input)}}
    if config.pool:
        out["pool"] = {"path": str(Path(config.pool).absolute()), "fingerprint": pool_fingerprint(config.pool)}
    return out
