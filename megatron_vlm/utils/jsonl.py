"""Reading JSON and JSONL inputs: errors name the file (and ``file:line``) and the reason.

Whatever the bytes (not UTF-8, cut off, nested thousands deep, a number of 10,000 digits), a reader
gets the caller's user-error type with one line, never ``UnicodeDecodeError``, ``RecursionError`` or
a ``ValueError`` from deep inside ``json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megatron_vlm.errors import LongVLMError


def parse_json(data: bytes | str, where: str, error: type[LongVLMError] = LongVLMError) -> Any:
    """``data`` (UTF-8 bytes or text) as JSON; ``error`` naming ``where`` if it is not."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as err:
        raise error(f"{where}: not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{where}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise error(f"{where}: not usable JSON (nested too deeply)") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise error(f"{where}: not usable JSON ({err})") from None


def read_json(path: str | Path, error: type[LongVLMError] = LongVLMError, kind: type = dict) -> Any:
    """The JSON document in ``path``, which must be a ``kind`` (default: an object); ``error`` naming the
    file if it is missing, unreadable, not JSON or another kind of value."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror})") from None
    value = parse_json(data, str(path), error)
    if not isinstance(value, kind):
        raise error(f"{path}: expected a JSON {_KINDS.get(kind, kind.__name__)}, got {_name(value)}")
    return value


_KINDS = {dict: "object", list: "array"}


def _name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def read_jsonl_objects(path: str | Path, error: type[LongVLMError] = LongVLMError) -> Iterator[tuple[str, int, dict]]:
    """``(where, line_number, object)`` for each non-blank line of ``path``; ``error`` (a user-error type)
    for a missing file, a line that is not JSON, or JSON that is not an object."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            obj = parse_json(line, where, error)
            if not isinstance(obj, dict):
                raise error(f"{where}: expected a JSON object, got {_name(obj)}")
            yield where, number, obj
