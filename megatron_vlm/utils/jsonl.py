"""Reading JSONL inputs: one JSON object per line, errors naming ``file:line`` and the reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from megatron_vlm.errors import LongVLMError


def read_jsonl_objects(path: str | Path, error: type[LongVLMError] = LongVLMError) -> Iterator[tuple[str, int, dict]]:
    """``(where, line_number, object)`` for each non-blank line of ``path``; ``error`` (a user-error type)
    for a missing file, a line that is not JSON, or JSON that is not an object."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise error(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, number, obj
