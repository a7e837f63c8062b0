"""The versioned generator prompts in ``prompts/`` (``common.v1.txt`` + the file a VQA task kind names).

Changing a prompt's wording means adding a new version file and bumping :data:`PROMPT_VERSION`, so
instances record exactly which prompt made them (and the response cache never mixes versions).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from string import Template

from megatron_vlm.formats.tasks import task_kind
from preprocess.synth.segments import Segment

PROMPT_VERSION = "v1"
PROMPT_DIR = Path(__file__).parent / "prompts"


@cache
def _load(name: str, version: str) -> str:
    return (PROMPT_DIR / f"{name}.{version}.txt").read_text(encoding="utf-8").strip()


def prompt_version(task: str, version: str = PROMPT_VERSION) -> str:
    return f"{task}.{version}"


def render_prompt(task: str, segment: Segment, version: str = PROMPT_VERSION) -> str:
    """The instruction text for one VQA request about ``segment``."""
    kind = task_kind(task)
    titles = "; ".join(f"'{t}'" for t in segment.sections)
    return Template(_load("common", version)).substitute(
        first_page=segment.first_page, last_page=segment.last_page,
        sections_note=f", made of the section(s) {titles}" if titles else "",
        task=task, task_title=kind.title, task_rules=_load(kind.prompt, version))
