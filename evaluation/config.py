"""The options of ``longvlm eval`` (typed dataclasses: CLI flags, API keywords and the recorded config).

``ModelOptions`` (backend, checkpoint, decoding, RoPE) and ``OutputOptions`` are shared by every
task that runs a model; each task config adds its own fields. Options that do not change what
the results are (batching, endpoint, concurrency, progress) are left out of a run's identity, so a
rerun with other values of them resumes the same results.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from megatron_vlm.errors import LongVLMError
from megatron_vlm.parallel import ParallelLayout
from megatron_vlm.utils.checks import MAX_DPI, MAX_IMAGE_PIXELS, MAX_SEQ_LEN, number_error
from preprocess.synth.generators.chat_client import ChatClientOptions

SCORING_MODES = ("generate", "teacher-forcing")
DTYPES = ("auto", "bfloat16", "float16", "float32")
INPUT_FORMATS = ("auto", "jsonl", "tasks", "mmlongbench", "slidevqa", "longdocurl")
TRUNCATE_SIDES = ("end", "middle")
NEEDLE_MODES = ("image", "text")
DEFAULT_LENGTHS = ("32K", "64K", "128K", "256K", "512K")
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_BATCH = 1024  # prompts per batch of the hf backend
MAX_SAMPLES = 1000  # needles per (length, depth, mode) cell
SHORT_ANSWER_INSTRUCTION = ("Answer with a single word, number, phrase or list only. If the document "
                            "does not contain the answer, answer \"Not answerable\".")

_MODEL, _HF, _ROPE = "model", "hf backend", "RoPE (extrapolation beyond the training window)"
_MEGATRON = "megatron backend (start it like training: torchrun / srun for TP/PP/CP)"


class EvalError(LongVLMError, ValueError):
    """A bad input or option of ``longvlm eval``: the message names the file/line or option and the reason."""


def pixel_errors(low: int | None, high: int | None) -> list[str]:
    """What is wrong with ``--min-pixels`` / ``--max-pixels`` (unset: the model family's): a lower bound scales
    every image up to it, so it is at most ``MAX_IMAGE_PIXELS``."""
    errors = list(filter(None, [number_error("--min-pixels", low, ge=1, le=MAX_IMAGE_PIXELS),
                                number_error("--max-pixels", high, ge=1)]))
    if not errors and low is not None and high is not None and high < low:
        errors.append(f"--max-pixels {high} must be >= --min-pixels {low}")
    return errors


def parse_length(text: str | int, option: str) -> int:
    """``"32K"`` -> 32768 (binary prefixes, as in the paper), ``"1M"`` -> 1048576, ``"5000"`` -> 5000."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", str(text))
    if not match or int(match[1]) <= 0:
        raise EvalError(f"--{option}: expected a positive token count such as 32K, 128K or 5000, got {text!r}")
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024 ** 2}[match[2].lower()]


@dataclass(kw_only=True)
class ModelOptions(ChatClientOptions):
    """How to run the model: the backend, the checkpoint, decoding and the RoPE override."""

    backend: str = field(default="hf", metadata={"group": _MODEL, "help": (
        "hf: transformers in this process (GPU or CPU); openai: any OpenAI-compatible server, e.g. vLLM "
        "serving the exported HF checkpoint (the way to run 256K-512K); megatron: the training model on a "
        "Megatron checkpoint at any TP/PP/CP, teacher-forced; see evaluation/backends")})
    checkpoint: str | None = field(default=None, metadata={"group": _MODEL, "metavar": "DIR", "help": (
        "hf/openai: a Hugging Face Qwen2.5-VL directory (hf loads it; openai reads its config.json for "
        "--rope-target-length, and its tokenizer); megatron: a Megatron checkpoint (RUN_DIR/checkpoints, or "
        "'longvlm convert hf-to-megatron' output), whose source HF directory gives the tokenizer")})
    tokenizer: str | None = field(default=None, metadata={"group": _MODEL, "metavar": "DIR", "help": (
        "tokenizer directory with the Qwen2.5-VL chat template (default: --checkpoint's); prompts are "
        "built and measured with it")})
    model: str | None = field(default=None, metadata={"group": _MODEL, "help": (
        "openai: the model name at the endpoint (default: --checkpoint as given, vLLM's default name)")})
    scoring: str = field(default="generate", metadata={"group": _MODEL, "choices": SCORING_MODES, "help": (
        "generate: greedy decoding, the prediction scored against the answer; teacher-forcing: the "
        "reference answer's log-likelihood and token accuracy, no decoding (hf only)")})
    max_new_tokens: int = field(default=64, metadata={"group": _MODEL, "help": "longest prediction, in tokens"})
    dtype: str = field(default="auto", metadata={"group": _HF, "choices": DTYPES, "help": (
        "hf: weights and activations (auto: bfloat16 on a GPU, float32 on a CPU)")})
    device: str | None = field(default=None, metadata={"group": _HF, "help": (
        "hf: torch device (default: cuda when this process has a GPU and LONGVLM_DEVICE is not cpu, else cpu)")})
    attn_implementation: str = field(default="sdpa", metadata={"group": _HF, "help": (
        "hf: transformers attention implementation (sdpa, flash_attention_2, eager)")})
    batch_size: int = field(default=8, metadata={"group": _HF, "help": (
        "hf: prompts per batch; prompts are sorted by length so a batch holds similar lengths")})
    max_batch_tokens: int = field(default=65536, metadata={"group": _HF, "help": (
        "hf: at most this many padded tokens per batch (a longer prompt runs alone)")})
    layout: ParallelLayout = field(default_factory=ParallelLayout, metadata={
        "group": _MEGATRON, "fields": ("tp", "pp", "cp", "sp"), "help": "the model's split over the processes"})
    attention_backend: str = field(default="torch", metadata={"group": _MEGATRON, "choices": ("torch", "te"), "help": (
        "megatron: core attention: torch (SDPA per segment; CPU and GPU) or te (Transformer Engine; GPU)")})
    transformer_impl: str = field(default="local", metadata={"group": _MEGATRON, "choices": ("local", "te"), "help": (
        "megatron: the layers' linears and norms: local (Megatron-Core's) or te (Transformer Engine; GPU)")})
    rope_base: float | None = field(default=None, metadata={"group": _ROPE, "help": (
        "use this RoPE base (rope_theta) instead of the checkpoint's")})
    rope_target_length: str | None = field(default=None, metadata={
        "group": _ROPE, "metavar": "LENGTH", "was": ("rope_ntk_length",), "help": (
        "the context length to evaluate at with an NTK-aware base (e.g. 512K; training's model.rope.target_length): "
        "base * (LENGTH / "
        "--rope-original-length)^(d/(d-2)), d = head dim (the base the paper trains 128K with)")})
    rope_original_length: str = field(default="32K", metadata={"group": _ROPE, "help": (
        "the context length the checkpoint's base was made for (Qwen2.5-VL: 32K)")})

    def model_option_errors(self) -> list[str]:
        errors = self.client_option_errors()
        if self.rope_base is not None and self.rope_target_length is not None:
            errors.append("--rope-base and --rope-target-length exclude each other")
        errors += filter(None, [number_error("--rope-base", self.rope_base, gt=0),
                                number_error("--max-new-tokens", self.max_new_tokens, ge=1, le=MAX_SEQ_LEN),
                                number_error("--batch-size", self.batch_size, ge=1, le=MAX_BATCH),
                                number_error("--max-batch-tokens", self.max_batch_tokens, ge=1)])
        for option, value in (("rope-original-length", self.rope_original_length),
                              ("rope-target-length", self.rope_target_length)):
            if value is not None:
                try:
                    parse_length(value, option)
                except EvalError as err:
                    errors.append(str(err))
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except RuntimeError:
                errors.append(f"--device {self.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)")
        if self.backend == "megatron" and self.scoring != "teacher-forcing":
            errors.append("--backend megatron scores by teacher forcing only: add --scoring teacher-forcing")
        if self.backend == "megatron" and not self.checkpoint:
            errors.append("--backend megatron needs --checkpoint MEGATRON_DIR")
        if self.backend == "openai" and self.scoring != "generate":
            errors.append("--backend openai can only --scoring generate (a server returns text, not "
                          "the answer's log-likelihood)")
        if self.backend == "hf" and not self.checkpoint:
            errors.append("--backend hf needs --checkpoint HF_DIR")
        if self.backend == "openai" and not (self.model or self.checkpoint):
            errors.append("--backend openai needs --model (the name at the endpoint) or --checkpoint")
        if not (self.tokenizer or self.checkpoint):
            errors.append("--tokenizer (or --checkpoint with its tokenizer) is needed to build and measure prompts")
        return errors


@dataclass(kw_only=True)
class OutputOptions:
    output: str = field(metadata={"flag": "-o", "metavar": "OUT_DIR", "help": (
        "results directory: results.jsonl (one row per example, appended as they finish), results.json "
        "(summary + config); a rerun skips the examples already there")})
    limit: int | None = field(default=None, metadata={"help": "run only the first N examples (a smoke test)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def output_option_errors(self) -> list[str]:
        return list(filter(None, [number_error("--limit", self.limit, ge=1)]))


# Options that do not change the results: a rerun with other values resumes the same run.
NOT_IDENTITY = frozenset({
    "output", "limit", "progress", "endpoint", "api_key_env", "concurrency", "timeout", "max_retries",
    "retry_backoff", "cache_dir", "device", "batch_size", "max_batch_tokens", "attn_implementation"})


def identity(config) -> dict:
    """The options that determine a run's results (recorded; a resumed run must match them)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IDENTITY}


@dataclass
class NiahConfig(ModelOptions, OutputOptions):
    pool: str = field(metadata={"metavar": "POOL_DIR", "help": "document pool whose pages make the haystack"})
    lengths: list[str] = field(default_factory=lambda: list(DEFAULT_LENGTHS), metadata={"help": (
        "context lengths in tokens (the whole prompt; K = 1024)")})
    depths: list[float] = field(default_factory=lambda: list(DEFAULT_DEPTHS), metadata={"help": (
        "needle depths: the share of the document tokens before the needle (0 = first, 1 = last)")})
    needle_modes: list[str] = field(default_factory=lambda: list(NEEDLE_MODES), metadata={"help": (
        "image: the needle is text drawn onto a page image; text: a text line between two pages")})
    samples: int = field(default=5, metadata={"help": (
        "needles per (length, depth, mode) cell, each in another haystack with another key and value "
        "(one sample makes a cell a 0/1 coin; five give steps of 0.2)")})
    seed: int = field(default=0, metadata={"help": "seeds the haystack documents, needle keys and values"})
    page_markers: bool = field(default=True, metadata={"help": (
        "put a 'Page N:' text marker before each page image, as in training")})

    def __post_init__(self) -> None:
        errors = self.model_option_errors()
        self.lengths = [str(v) for v in self.lengths]
        for value in self.lengths:
            parse_length(value, "lengths")
        if any(not 0.0 <= d <= 1.0 for d in self.depths):
            errors.append(f"--depths must lie in [0, 1], got {self.depths}")
        if not self.needle_modes or any(m not in NEEDLE_MODES for m in self.needle_modes):
            errors.append(f"--needle-modes: choose from {', '.join(NEEDLE_MODES)}, got {self.needle_modes}")
        errors += filter(None, [number_error("--samples", self.samples, ge=1, le=MAX_SAMPLES),
                                number_error("--seed", self.seed, ge=0), *self.output_option_errors()])
        if errors:
            raise EvalError("; ".join(errors))


@dataclass
class DocQAConfig(ModelOptions, OutputOptions):
    input: str = field(metadata={"positional": True, "metavar": "INPUT", "help": (
        "questions: a JSONL of {doc, question, answer, answer_format, evidence_pages}, a TASKS.jsonl "
        "of 'longvlm synth' (with --pool), MMLongBench-Doc's samples.json or LongDocURL's LongDocURL.jsonl "
        "(with --pdf-dir), or a SlideVQA annotation JSONL (with --image-dir)")})
    input_format: str = field(default="auto", metadata={"choices": INPUT_FORMATS, "help": (
        "auto: by content (a JSON list = mmlongbench; lines with 'task' and 'doc_id' = tasks; 'deck_name' = "
        "slidevqa; 'doc_no' = longdocurl; 'doc' = jsonl)")})
    pool: str | None = field(default=None, metadata={"metavar": "POOL_DIR", "help": (
        "pool holding the documents named by doc id")})
    pdf_dir: str | None = field(default=None, metadata={"metavar": "DIR", "help": (
        "folder of the PDFs named by relative paths (default: the input file's folder)")})
    image_dir: str | None = field(default=None, metadata={"metavar": "DIR", "help": (
        "slidevqa: the folder holding one subfolder of slide images per deck (DIR/DECK_NAME/*.jpg, as "
        "SlideVQA's download script writes them; default: the input file's folder)")})
    dpi: int = field(default=144, metadata={"help": "render resolution of PDF pages, as the pool renders them"})
    min_pixels: int | None = field(default=None, metadata={
        "help": "smart_resize lower bound on page pixels (default: the model family's preprocessor's)"})
    max_pixels: int | None = field(default=None, metadata={
        "help": "smart_resize upper bound on page pixels (default: the model family's preprocessor's)"})
    page_markers: bool = field(default=True, metadata={"help": (
        "put a 'Page N:' text marker before each page image, as in training (MMLongBench-Doc's reference "
        "prompt has none; results record which was used)")})
    max_context: str | None = field(default=None, metadata={"metavar": "LENGTH", "help": (
        "truncate documents whose prompt exceeds LENGTH tokens (e.g. 128K) by dropping pages; dropped "
        "pages and evidence are recorded per example")})
    context_lengths: list[str] | None = field(default=None, metadata={"metavar": "LENGTH", "help": (
        "run every question at each of these context lengths (the paper's columns: 64K 128K 256K 512K), "
        "truncating as --max-context does; rows record the target and the prompt tokens actually used, "
        "the summary gives Acc/F1 per length")})
    truncate: str = field(default="end", metadata={"choices": TRUNCATE_SIDES, "help": (
        "with --max-context: drop pages from the end, or from the middle (keeping the first and last ones); "
        "kept pages keep their page numbers")})
    instruction: str | None = field(default=None, metadata={"help": (
        "text put after the question (default: a short-answer instruction for MMLongBench-Doc input, none "
        "otherwise; '' for none)")})

    def __post_init__(self) -> None:
        errors = self.model_option_errors()
        if self.max_context is not None:
            parse_length(self.max_context, "max-context")
        for value in self.context_lengths or []:
            parse_length(value, "context-lengths")
        if self.max_context is not None and self.context_lengths:
            errors.append("--max-context and --context-lengths exclude each other")
        errors += filter(None, [number_error("--dpi", self.dpi, ge=1, le=MAX_DPI), *self.output_option_errors()])
        errors += pixel_errors(self.min_pixels, self.max_pixels)
        for option, folder in (("--pdf-dir", self.pdf_dir), ("--image-dir", self.image_dir)):
            if folder is not None and not Path(folder).is_dir():
                errors.append(f"{option} {folder}: no such folder")
        if errors:
            raise EvalError("; ".join(errors))


@dataclass
class ScoreConfig:
    predictions: str = field(metadata={"positional": True, "metavar": "PREDICTIONS.jsonl", "help": (
        "one JSON object per line with question, answer, answer_format and prediction (optional: "
        "evidence_pages, evidence_sources, doc_type, task); a results.jsonl of 'longvlm eval' works too")})
    json: bool = field(default=False, metadata={"help": "print the summary as one JSON object"})
    output: str | None = field(default=None, metadata={"flag": "-o", "metavar": "SCORED.jsonl", "help": (
        "also write the rows with their score")})


@dataclass
class MMNiahConfig(ModelOptions, OutputOptions):
    input: list[str] = field(metadata={"positional": True, "metavar": "TASK.jsonl", "help": (
        "MM-NIAH files, one per task as the benchmark names them (retrieval-text.jsonl, counting-image.jsonl, "
        "reasoning-image.jsonl, ...)")})
    image_dir: str | None = field(default=None, metadata={"metavar": "DIR", "help": (
        "folder the images_list / choices_image_path paths are relative to (default: the first file's folder)")})
    min_pixels: int | None = field(default=None, metadata={
        "help": "smart_resize lower bound on image pixels (default: the model family's preprocessor's)"})
    max_pixels: int | None = field(default=None, metadata={
        "help": "smart_resize upper bound on image pixels (default: the model family's preprocessor's)"})
    page_markers: bool = field(default=False, metadata={"help": (
        "put a 'Page N:' marker before each image (MM-NIAH's prompt has none)")})

    def __post_init__(self) -> None:
        errors = self.model_option_errors() + self.output_option_errors() + pixel_errors(self.min_pixels, self.max_pixels)
        if errors:
            raise EvalError("; ".join(errors))
