"""Reading TASKS.jsonl files (docs/formats.md "Tasks") with errors that name the file and line."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from megatron_vlm.utils.jsonl import read_jsonl_objects
from preprocess.dataset.errors import BuildError

TASK_NAMES = ("extract-single", "extract-multi", "reasoning", "ocr-full", "ocr-needle")
REQUIRED = {"id": str, "task": str, "doc_id": str, "question": str, "answer": str}


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


def read_tasks(paths: list[str]) -> Iterator[TaskRecord]:
    """Yield every instance of every file, validating each line."""
    for file_index, path in enumerate(paths):
        if not Path(path).is_file():
            raise BuildError(f"{path}: tasks file not found")
        for where, line_number, obj in read_jsonl_objects(path, BuildError):
            yield task_record(obj, where, file_index, line_number)


def task_record(obj: dict, where: str, file_index: int, line_number: int) -> TaskRecord:
    """One tasks-file line as a :class:`TaskRecord`, or a ``BuildError`` naming ``where`` and the key."""
    for key, tp in REQUIRED.items():
        if key not in obj:
            raise BuildError(f"{where}: missing key '{key}'")
        if not isinstance(obj[key], tp):
            raise BuildError(f"{where}: '{key}' must be a {tp.__name__}, got {type(obj[key]).__name__}")
    if obj["task"] not in TASK_NAMES:
        raise BuildError(f"{where}: unknown task '{obj['task']}' (expected one of {', '.join(TASK_NAMES)})")
    if not obj["answer"].strip():
        raise BuildError(f"{where}: empty answer")
    return TaskRecord(obj["id"], obj["task"], obj["doc_id"], obj["question"], obj["answer"],
                      file_index, line_number)
