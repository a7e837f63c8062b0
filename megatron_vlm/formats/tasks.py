"""The tasks file (``TASKS.jsonl``, docs/formats.md "Tasks"): written by ``longvlm synth``, read by
``longvlm build`` and ``longvlm eval docqa``; and the one registry of task kinds.

A task kind is data: its name, its category (``vqa``: long-document VQA, a QA pair generated from a
sampled segment; ``ocr``: transcription targets from the layout blocks; ``instruction``: short-context
instruction data read by ``longvlm build``, never synthesized), how many evidence pages an instance
has, the generator prompt of a VQA kind (``preprocess/synth/prompts/NAME.v1.txt``) and its planner
(``segment``: a segment of consecutive sections is sampled per instance; ``document``: one instance
per document; ``pages``: pages sampled per instance). Stages look a kind up here and act on these
fields; none of them tests task names. Adding a task is one :data:`TASK_KINDS` entry and its prompt
file (and, for the offline generator, its question makers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from megatron_vlm.errors import LongVLMError
from megatron_vlm.utils.jsonl import read_jsonl_objects

CATEGORIES = ("vqa", "ocr", "instruction")
PLANNERS = ("segment", "document", "pages")


@dataclass(frozen=True)
class TaskKind:
    name: str
    category: str               # one of CATEGORIES
    title: str                  # what the kind asks for, in words (prompts, reports)
    evidence_pages: tuple[int, int | None]  # (min, max) evidence pages of one instance; None: no maximum
    planner: str | None         # one of PLANNERS; None: not made by synth
    prompt: str | None = None   # generator prompt file stem (VQA kinds)

    @property
    def synthesized(self) -> bool:
        return self.planner is not None


TASK_KINDS: dict[str, TaskKind] = {k.name: k for k in (
    TaskKind("extract-single", "vqa", "single-page extraction", (1, 1), "segment", "extract-single"),
    TaskKind("extract-multi", "vqa", "multi-page extraction", (2, None), "segment", "extract-multi"),
    TaskKind("reasoning", "vqa", "reasoning over extracted facts", (1, None), "segment", "reasoning"),
    TaskKind("ocr-full", "ocr", "full-document OCR", (1, None), "document"),
    TaskKind("ocr-needle", "ocr", "needle-page OCR", (1, None), "pages"),  # range: synth's --needle-pages
    TaskKind("short", "instruction", "short-context instruction data", (0, None), None),
)}
TASK_NAMES = tuple(TASK_KINDS)  # the order is the task code of a built dataset's samples
SYNTH_TASKS = tuple(k.name for k in TASK_KINDS.values() if k.synthesized)
REQUIRED = {"id": str, "task": str, "doc_id": str, "question": str, "answer": str}


class TasksFormatError(LongVLMError, ValueError):
    """A tasks file that cannot be read: the message names the file, line and key."""


def task_kind(name: str) -> TaskKind:
    if name not in TASK_KINDS:
        raise TasksFormatError(f"unknown task {name!r} (expected one of {', '.join(SYNTH_TASKS)})")
    return TASK_KINDS[name]


def kinds_of(category: str) -> tuple[str, ...]:
    return tuple(k.name for k in TASK_KINDS.values() if k.category == category)


@dataclass(frozen=True)
class TaskRecord:
    """One training instance of a tasks file and where it came from."""

    id: str
    task: str
    doc_id: str
    question: str
    answer: str
    file_index: int
    line_number: int  # 1-based


def read_tasks(paths: list[str], error: type[Exception] = TasksFormatError) -> Iterator[TaskRecord]:
    """Yield every instance of every file, validating each line (errors raised as ``error``)."""
    for file_index, path in enumerate(paths):
        if not Path(path).is_file():
            raise error(f"{path}: tasks file not found")
        for where, line_number, obj in read_jsonl_objects(path, error):
            yield task_record(obj, where, file_index, line_number, error)


def task_record(obj: dict, where: str, file_index: int, line_number: int,
                error: type[Exception] = TasksFormatError) -> TaskRecord:
    """One tasks-file line as a :class:`TaskRecord`, or ``error`` naming ``where`` and the key."""
    for key, tp in REQUIRED.items():
        if key not in obj:
            raise error(f"{where}: missing key '{key}'")
        if not isinstance(obj[key], tp):
            raise error(f"{where}: '{key}' must be a {tp.__name__}, got {type(obj[key]).__name__}")
    if obj["task"] not in SYNTH_TASKS:
        raise error(f"{where}: unknown task '{obj['task']}' (expected one of {', '.join(SYNTH_TASKS)})")
    if not obj["answer"].strip():
        raise error(f"{where}: empty answer")
    return TaskRecord(obj["id"], obj["task"], obj["doc_id"], obj["question"], obj["answer"],
                      file_index, line_number)
