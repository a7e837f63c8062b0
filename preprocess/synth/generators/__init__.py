"""QA generators for the long-document VQA tasks: ``offline`` (layout blocks, no model) and ``openai``.

A generator gets one :class:`QARequest` (task, document, sampled segment, per-request seed) and
returns the parsed JSON object ``{"question", "answer", "evidence", "evidence_pages"}`` or raises
:class:`preprocess.synth.validate.Rejected` (``malformed``, ``no_content``, ``request_failed``).
``generate`` is called from several threads at once.
"""

from __future__ import annotations

from preprocess.synth.generators.base import Generator, QARequest

__all__ = ["Generator", "QARequest", "make_generator"]


def make_generator(config) -> Generator:
    """The generator named by ``config.generator`` (a :class:`preprocess.synth.config.SynthConfig`)."""
    if config.generator == "openai":
        from preprocess.synth.generators.openai import OpenAIGenerator

        return OpenAIGenerator.from_config(config)
    from megatron_vlm.formats.tasks import task_kind
    from preprocess.synth.config import SynthError
    from preprocess.synth.generators.offline import QUESTION_MAKERS, OfflineGenerator

    missing = [t for t in config.task_list() if task_kind(t).category == "vqa" and t not in QUESTION_MAKERS]
    if missing:
        raise SynthError(f"--generator offline has no question makers for {', '.join(missing)}; use --generator openai")
    return OfflineGenerator()
