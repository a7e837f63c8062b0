"""``longvlm eval mmniah``: MM-NIAH (Needle In A Multimodal Haystack, OpenGVLab), read from its own files.

Input: MM-NIAH's JSONL files, one per task, named as the benchmark names them
(``retrieval-text.jsonl``, ``counting-image.jsonl``, ``reasoning-image.jsonl``, ...; a ``-val`` /
``-test`` suffix is allowed). Each line: ``id``, ``images_list`` (paths relative to
``--image-dir``), ``context`` (text with ``<image>`` placeholders), ``question``, ``answer`` (an int:
multiple choice; a list: counting; a string) and ``meta`` (``placed_depth``, ``context_length``,
``choices``, ``choices_image_path``).

The prompt is MM-NIAH's own (``get_input`` of its evaluation code): text choices are appended as
``A. ...`` lines, image choices as ``A. <image>`` with their images, then "Answer with the option's
letter from the given choices directly." (multiple choice) or "Answer the question using a single
word or phrase." (otherwise). Context, question and images are interleaved in placeholder order
through the training chat layout, without page markers; images are resized as the model family's
processor resizes them. Scores follow MM-NIAH's scorer (``evaluation/benchmarks.py``): accuracy for
retrieval and reasoning, soft accuracy for counting, per context-length bin (its bins, 1K-64K)
averaged over the depth bins.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from evaluation.benchmarks import mmniah_bin_scores, mmniah_score
from evaluation.config import EvalError, MMNiahConfig
from evaluation.pages import ImagePage
from evaluation.prompt import Context, PromptBuilder, Request
from megatron_vlm.utils.jsonl import read_jsonl_objects

PLACEHOLDER = "<image>"
TASK_NAME = re.compile(r"(retrieval|counting|reasoning)-(text|image)")
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."


def task_of(path: Path) -> str:
    match = TASK_NAME.search(path.stem)
    if not match:
        raise EvalError(f"{path}: an MM-NIAH file is named after its task (retrieval-text.jsonl, "
                        "counting-image.jsonl, reasoning-image.jsonl, ...)")
    return match.group(0)


def _answer(value, task: str, where: str):
    if task.startswith("counting") and isinstance(value, str):  # some releases keep the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise EvalError(f"{where}: a counting answer is a list, got {value!r}") from None
    if not isinstance(value, (int, str, list)) or isinstance(value, bool):
        raise EvalError(f"{where}: 'answer' must be an int, a string or a list")
    return value


def prompt_parts(item: dict, where: str) -> tuple[str, list[str]]:
    """MM-NIAH's question text (choices and instruction added) and its images in placeholder order."""
    meta = item.get("meta") or {}
    question, images = item["question"], list(item["images_list"])
    choices, choice_images = meta.get("choices"), meta.get("choices_image_path")
    if choices and choice_images:
        raise EvalError(f"{where}: 'choices' and 'choices_image_path' exclude each other")
    if choices:
        question += "".join(f"\n{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))
        question += "\n" + CHOICE_INSTRUCTION
    elif choice_images:
        question += "".join(f"\n{chr(ord('A') + i)}. {PLACEHOLDER}" for i in range(len(choice_images)))
        images += list(choice_images)
        question += "\n" + CHOICE_INSTRUCTION
    else:
        question += "\n" + OPEN_INSTRUCTION
    return f"{item['context']}\n{question}", images


def read_items(paths: list[str]) -> list[tuple[str, str, dict]]:
    """``(task, where, item)`` of every line of every file, checked."""
    out = []
    for name in paths:
        path = Path(name)
        task = task_of(path)
        for where, _, item in read_jsonl_objects(path, EvalError):
            for key, kind in (("id", (int, str)), ("images_list", list), ("context", str), ("question", str)):
                if not isinstance(item.get(key), kind):
                    raise EvalError(f"{where}: '{key}' missing or not a {kind}")
            if "answer" not in item or not isinstance(item.get("meta"), dict):
                raise EvalError(f"{where}: 'answer' and 'meta' are required")
            text, images = prompt_parts(item, where)
            if text.count(PLACEHOLDER) != len(images):
                raise EvalError(f"{where}: {text.count(PLACEHOLDER)} <image> placeholders for {len(images)} images")
            item["answer"] = _answer(item["answer"], task, where)
            out.append((task, where, item))
    if not out:
        raise EvalError("no MM-NIAH items in " + ", ".join(paths))
    return out


def requests(config: MMNiahConfig, builder: PromptBuilder, pool=None) -> list[Request]:
    image_dir = Path(config.image_dir) if config.image_dir else Path(config.input[0]).parent
    out = []
    for task, where, item in read_items(config.input):
        text, images = prompt_parts(item, where)
        segments = text.split(PLACEHOLDER)
        try:
            pages = [ImagePage.of(image_dir / p, builder.geometry, config.min_pixels, config.max_pixels) for p in images]
        except ValueError as err:
            raise EvalError(f"{where}: {err}") from None
        lines = {i: s.strip("\n") for i, s in enumerate(segments[:-1]) if s.strip()}
        question = segments[-1].strip("\n")
        if builder.has_special_text(text):
            raise EvalError(f"{where}: the text spells a special token of the tokenizer")
        answer = item["answer"]
        reference = chr(ord("A") + answer) if isinstance(answer, int) else \
            json.dumps(answer) if isinstance(answer, list) else answer
        meta = item["meta"]
        out.append(builder.build(f"{task}/{item['id']}", question, reference, Context(pages, None, lines), {
            "task": task, "mmniah_answer": answer, "placed_depth": meta.get("placed_depth", 0.0),
            "context_length": meta.get("context_length", 0), "images": len(pages)}))
    return out


def score(request: Request, output: dict) -> dict:
    if "prediction" not in output:
        return {}
    return {"score": mmniah_score(request.meta["mmniah_answer"], output["prediction"])}


def summarize(rows: list[dict], config: MMNiahConfig) -> dict:
    """Per task: examples, mean score, MM-NIAH's per-length-bin scores and their mean; overall: the
    mean of the task scores."""
    if config.scoring != "generate":
        tokens = sum(r["answer_tokens"] for r in rows)
        return {"n": len(rows), "answer_logprob_per_token":
                sum(r["answer_logprob"] for r in rows) / tokens if tokens else None}
    tasks = {}
    for name in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == name]
        tasks[name] = {"n": len(mine), "accuracy": sum(r["score"] for r in mine) / len(mine), **mmniah_bin_scores(mine)}
    return {"n": len(rows), "tasks": tasks,
            "score": sum(t["score"] for t in tasks.values()) / len(tasks) if tasks else 0.0}


def report(summary: dict) -> str:
    if "tasks" not in summary:
        return f"teacher forcing over {summary['n']} examples: {summary.get('answer_logprob_per_token')}"
    lines = [f"MM-NIAH score {summary['score']:.4f} over {summary['n']} examples", "",
             f"{'task':<18}{'n':>5}{'acc':>8}{'score':>8}  per length bin"]
    for name, t in summary["tasks"].items():
        bins = "  ".join(f"{k}:{v:.2f}" for k, v in t["by_length"].items())
        lines.append(f"{name:<18}{t['n']:>5}{t['accuracy']:>8.3f}{t['score']:>8.3f}  {bins}")
    return "\n".join(lines)


def artifacts(summary: dict, directory: Path) -> list[Path]:
    return []


def inputs(config: MMNiahConfig) -> dict:
    from megatron_vlm.utils.hashing import sha256_file

    return {"input": [{"path": str(Path(p).absolute()), "sha256": sha256_file(p)} for p in config.input]}
