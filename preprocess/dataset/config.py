"""The options of ``longvlm build`` (one typed dataclass: CLI flags, API keywords, recorded config)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from megatron_vlm.models.registry import family_names
from megatron_vlm.utils.atomic import check_creatable
from megatron_vlm.utils.checks import MAX_SEQ_LEN, MAX_WORKERS, check_number
from preprocess.dataset.errors import BuildError
from preprocess.dataset.mixture import DEFAULT_MIXTURE


def check_token_budget(value: float) -> None:
    """A token budget is a finite number of at least 1 token (also checked by ``longvlm demo`` up front)."""
    if not (math.isfinite(value) and value >= 1):
        raise BuildError(f"--token-budget must be a finite number of at least 1 token, got {value}")


@dataclass
class BuildConfig:
    tasks: list[str] = field(metadata={
        "positional": True, "metavar": "TASKS.jsonl",
        "help": "tasks files written by 'longvlm synth' (docs/formats.md 'Tasks')"})
    pool: str = field(metadata={"help": "the document pool the tasks were made from (POOL_DIR)"})
    tokenizer: str = field(metadata={
        "help": "Hugging Face tokenizer directory with the model's chat template (the model's own)"})
    output: str = field(metadata={
        "flag": "-o", "metavar": "DATA_PREFIX",
        "help": "output prefix: writes DATA_PREFIX_{tokens,targets,images,samples}.bin/.idx and DATA_PREFIX.json"})
    family: str | None = field(default=None, metadata={
        "choices": family_names(),
        "help": "model family the dataset is built for: its image geometry (pages of a pool rendered for "
                "another family are resized) and token ids (default: the pool's family)"})
    seq_length: int = field(default=131072, metadata={"was": ("max_seq_len",), "help": (
        "packed row length in tokens (the run's train.seq_length); longer samples are dropped and counted")})
    token_budget: float = field(default=5e9, metadata={
        "help": "total sample tokens in the dataset (samples are repeated or subsampled to meet it within 1%%)"})
    max_repeats: float = field(default=4.0, metadata={
        "help": "refuse a --token-budget that needs more uses of each sample than this, on average per "
                "task (about 4 epochs of repeated data cost little; beyond it their value falls off "
                "sharply: raise it only on purpose)"})
    mixture: str = field(default=DEFAULT_MIXTURE, metadata={
        "help": "task token shares as TASK=WEIGHT,... (normalized); tasks not named are left out"})
    length_dist: str = field(default="pool-native", metadata={
        "metavar": "pool-native|long-biased|FILE",
        "help": "target histogram of sample lengths: the pool's own, the paper's long-biased "
                "(83.9%% of examples >= 100K tokens; its bins scaled by --seq-length / 128K), or a JSON "
                "file {edges, fractions}"})
    short_data: list[str] | None = field(default=None, metadata={
        "metavar": "FILE",
        "help": "short-context instruction data mixed in at --short-share: LLaVA-style .json/.jsonl "
                "(conversations with <image> placeholders, image paths) or Hugging Face datasets saved as "
                ".parquet with embedded images (LLaVA-OneVision-Data's layout); bad records are skipped and "
                "counted by reason"})
    short_share: float = field(default=0.0, metadata={
        "help": "token share of the short data in the dataset (0-1; the long tasks share the rest by "
                "--mixture; 1: short data only, e.g. an SFT stage); needs --short-data"})
    short_image_dir: str | None = field(default=None, metadata={
        "metavar": "DIR", "help": "folder the image paths of LLaVA JSON/JSONL files are relative to "
                                  "(default: each file's folder)"})
    page_markers: bool = field(default=True, metadata={
        "help": "put a 'Page N:' text marker before each page image (needed for page-anchored questions)"})
    seed: int = field(default=1234, metadata={"help": "seed of the sample selection and order"})
    workers: int = field(default=1, metadata={"help": "tokenizer processes"})
    pack_window: int = field(default=20000, metadata={
        "help": "samples per best-fit-decreasing packing window"})
    copy_pages: bool = field(default=False, metadata={
        "help": "copy the referenced page images into DATA_PREFIX_pages (self-contained dataset) "
                "instead of referencing the pool's page store"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def validate(self) -> None:
        check_number("--seq-length", self.seq_length, ge=1, le=MAX_SEQ_LEN, error=BuildError)
        check_token_budget(self.token_budget)
        check_number("--max-repeats", self.max_repeats, ge=1, error=BuildError)
        check_number("--workers", self.workers, ge=1, le=MAX_WORKERS, error=BuildError)
        check_number("--pack-window", self.pack_window, ge=1, error=BuildError)
        check_number("--seed", self.seed, ge=0, error=BuildError)
        if not self.tasks:
            raise BuildError("no tasks files given")
        if not (math.isfinite(self.short_share) and 0 <= self.short_share <= 1):
            raise BuildError(f"--short-share must be in [0, 1], got {self.short_share}")
        if bool(self.short_share) != bool(self.short_data):
            raise BuildError("--short-share and --short-data go together: give both (a share > 0 and the files) "
                             "or neither")
        for path in self.short_data or []:
            if not Path(path).is_file():
                raise BuildError(f"--short-data {path}: file not found")
        for path in self.tasks:
            if not Path(path).is_file():
                raise BuildError(f"{path}: tasks file not found")
        check_creatable(self.output, "-o", BuildError)
