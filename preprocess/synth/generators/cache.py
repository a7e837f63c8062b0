"""On-disk cache of chat-completion responses, keyed by a SHA-256 of the canonical request JSON.

One small JSON file per response (``KEY[:2]/KEY.json``), written atomically, so that concurrent
workers never collide and a job killed mid-run keeps everything it had received.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from megatron_vlm.utils.atomic import write_json


def request_key(payload: dict) -> str:
    """Stable hash of a request (model, messages with their images, sampling parameters)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict) -> None:
        write_json(self._path(key), value, indent=None)
