"""QA generators for the long-document VQA tasks: ``offline`` (layout blocks, no model) and ``openai``.

A generator gets one :class:`QARequest` (task, document, sampled segment, per-request seed) and
returns the parsed JSON object ``{"question", "answer", "evidence", "evidence_pages"}`` or raises
:class:`preprocess.synth.validate.Rejected` (``malformed``, ``no_content``, ``request_failed``).
``generate`` is called from several threads at once.
"""

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


def make_generator(config) -> Generator:
    """The generator named by ``config.generator`` (a :class:`preprocess.synth.config.SynthConfig`)."""
    if config.generator == "openai":
        from preprocess.synth.generators.openai import OpenAIGenerator

        return OpenAIGenerator.from_config(config)
    from preprocess.synth.generators.offline import OfflineGenerator

    return OfflineGenerator()
