"""What every QA generator takes and provides: the request and the ``Generator`` protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from preprocess.synth.segments import Segment


@dataclass(frozen=True)
class QARequest:
    task: str
    doc: dict  # the pool's manifest entry
    segment: Segment
    seed: int


class Generator(Protocol):
    def info(self, task: str) -> dict:
        """``{"name", "model", "prompt_version"}`` recorded in each instance."""

    def generate(self, pool, request: QARequest) -> dict: ...

    def stats(self) -> dict:
        """Request counters for the run's summary (empty when there are none)."""
