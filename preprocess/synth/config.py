"""The options of ``longvlm synth`` (one typed dataclass, also the CLI); the task kinds are
``megatron_vlm.formats.tasks.TASK_KINDS``."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_vlm.errors import LongVLMError
from megatron_vlm.formats.tasks import SYNTH_TASKS
from preprocess.synth.generators.chat_client import ChatClientOptions

ALL_TASKS = SYNTH_TASKS
CONTENT_OPTIONS = ("tasks", "generator", "per_doc", "per_task", "seed", "segment_pages", "needle_pages", "model",
                   "temperature", "max_tokens")


class SynthError(LongVLMError, ValueError):
    """Bad options or input: reported as one clear message, never a traceback."""


def parse_range(text: str, name: str) -> tuple[int, int]:
    """``"8-15"`` -> ``(8, 15)``; ``"3"`` -> ``(3, 3)``."""
    try:
        parts = [int(p) for p in str(text).split("-")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise SynthError(f"--{name}: expected 'MIN-MAX' with 1 <= MIN <= MAX, got {text!r}")
    return parts[0], parts[1]


@dataclass
class SynthConfig(ChatClientOptions):
    pool: str = field(metadata={"help": "pool directory written by 'longvlm pool'", "positional": True,
                                "metavar": "POOL_DIR"})
    output: str = field(metadata={"help": "output TASKS.jsonl (written atomically)", "flag": "-o",
                                  "metavar": "TASKS.jsonl"})
    tasks: str = field(default=",".join(ALL_TASKS), metadata={
        "help": "comma-separated tasks to make: " + ", ".join(ALL_TASKS)})
    generator: str = field(default="offline", metadata={
        "help": "QA generator for the VQA tasks: 'offline' (deterministic, from the layout blocks; no "
                "model) or 'openai' (any OpenAI-compatible chat-completions endpoint, e.g. vLLM)",
        "choices": ["offline", "openai"]})
    per_doc: int = field(default=1, metadata={"help": "instances attempted per document and task"})
    per_task: int | None = field(default=None, metadata={
        "help": "instead of --per-doc: instances attempted per task in all, spread round-robin over the "
                "documents"})
    seed: int = field(default=0, metadata={"help": "random seed (segments, pages, question choice)"})
    segment_pages: str = field(default="8-15", metadata={
        "help": "page span of the sampled segment of consecutive sections (short-to-long VQA)"})
    needle_pages: str = field(default="1-3", metadata={"help": "pages transcribed by ocr-needle"})
    model: str | None = field(default=None, metadata={"help": "openai: model name (required)"})
    temperature: float = field(default=0.7, metadata={"help": "openai: sampling temperature"})
    max_tokens: int = field(default=1024, metadata={"help": "openai: max tokens of one answer"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    shard: int = field(default=0, metadata={"help": "this job's shard index (0-based)"})
    num_shards: int = field(default=1, metadata={
        "help": "make only the instances of every N-th document of the pool (e.g. a SLURM job array: "
                "--shard $SLURM_ARRAY_TASK_ID); join the shard outputs with --merge"})
    merge: list[str] | None = field(default=None, metadata={
        "metavar": "SHARD.jsonl",
        "help": "join the outputs of all --num-shards shards made from POOL_DIR into -o, in the order one "
                "unsharded run writes them (the options are the shards'; nothing is generated): "
                "longvlm synth POOL_DIR --merge tasks.shard*.jsonl -o tasks.jsonl"})

    def content_options(self) -> dict:
        """The options that decide what is made (shards joined by ``--merge`` must agree on them; the
        endpoint options may differ, e.g. one server per shard)."""
        return {name: getattr(self, name) for name in CONTENT_OPTIONS}

    def task_list(self) -> list[str]:
        tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        unknown = [t for t in tasks if t not in ALL_TASKS]
        if unknown or not tasks:
            raise SynthError(f"--tasks: unknown task(s) {unknown or tasks}; choose from {', '.join(ALL_TASKS)}")
        return list(dict.fromkeys(tasks))

    def validate(self) -> None:
        if not 0 <= self.shard < self.num_shards:
            raise SynthError(f"--shard {self.shard} must be in [0, --num-shards {self.num_shards})")
        if self.merge is not None and self.num_shards != 1:
            raise SynthError("--merge takes the shards' outputs; --shard/--num-shards are for making one shard")
        self.task_list()
        parse_range(self.segment_pages, "segment-pages")
        parse_range(self.needle_pages, "needle-pages")
        if self.per_doc < 1 or (self.per_task is not None and self.per_task < 1):
            raise SynthError("--per-doc and --per-task must be >= 1")
        if errors := self.client_option_errors():
            raise SynthError("; ".join(errors))
        if self.generator == "openai" and not self.model:
            raise SynthError("--generator openai needs --model")
