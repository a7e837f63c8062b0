"""Options of ``longvlm convert`` (one dataclass per action; each field is one CLI option)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from megatron_vlm.errors import ConfigError
from megatron_vlm.parallel import ParallelLayout
from megatron_vlm.utils.atomic import check_creatable
from megatron_vlm.utils.checks import MAX_SEQ_LEN, check_number

DTYPES = ("bfloat16", "float16", "float32")
_LAYOUT_FIELDS = ("tp", "pp")  # a checkpoint is global: only TP (vocabulary padding) and PP (layers) matter
MAX_VOCAB_MULTIPLE = 2 ** 16  # Megatron pads to 128 x TP; a multiple beyond this only wastes embedding rows
_DTYPE_HELP = "cast every tensor to this dtype (default: keep the source dtype, e.g. bf16 in -> bf16 out)"


def dtype_option() -> Any:
    """``--dtype``: the one declaration of the option every writing action has."""
    return field(default=None, metadata={"help": _DTYPE_HELP, "choices": DTYPES})


@dataclass
class MegatronTarget:
    """The options of a Megatron checkpoint being written (``hf-to-megatron``, ``reshard``): the layout it is
    validated and vocabulary-padded for."""

    layout: ParallelLayout = field(default_factory=ParallelLayout, metadata={
        "fields": _LAYOUT_FIELDS, "help": "the layout the checkpoint is validated and vocabulary-padded for"})
    make_vocab_size_divisible_by: int = field(default=128, metadata={
        "help": "pad the vocabulary to a multiple of this times TP (Megatron's --make-vocab-size-divisible-by)"})

    def check(self) -> None:
        check_number("--make-vocab-size-divisible-by", self.make_vocab_size_divisible_by, ge=1, le=MAX_VOCAB_MULTIPLE)


@dataclass
class HFToMegatronConfig:
    hf: str = field(metadata={"help": "Hugging Face model directory (config.json, safetensors + index) of a registered model family (docs/model.md)"})
    out: str = field(metadata={"help": "new Megatron checkpoint directory (must not exist)"})
    target: MegatronTarget = field(default_factory=MegatronTarget)
    dtype: str | None = dtype_option()

    def check(self) -> None:
        """The options alone, before anything is read or written."""
        self.target.check()
        check_creatable(self.out, "--out")


@dataclass
class MegatronToHFConfig:
    ckpt: str = field(metadata={"help": "Megatron checkpoint directory (with latest_checkpointed_iteration.txt)"})
    out: str = field(metadata={"help": "new Hugging Face directory (must not exist)"})
    hf_template: str | None = field(default=None, metadata={
        "help": "HF directory whose tokenizer, processor, chat template and generation config are copied "
                "(default: the source directory recorded at import, if it still exists)"})
    iteration: str | None = field(default=None, metadata={
        "help": "iteration to export, a number or 'release' (default: the one in latest_checkpointed_iteration.txt)"})
    dtype: str | None = dtype_option()
    max_shard_size: str = field(default="5GB", metadata={"help": "largest safetensors shard"})
    rope_theta: float | None = field(default=None, metadata={
        "help": "RoPE base the model was trained with (default: the one recorded in the checkpoint)"})
    rope_scaling: str | None = field(default=None, metadata={
        "help": "JSON object merged into the RoPE scaling parameters, e.g. "
                "'{\"rope_type\": \"yarn\", \"factor\": 4.0}' (default: as recorded)"})
    max_position_embeddings: int | None = field(default=None, metadata={
        "help": "maximum positions the model was trained for (default: as recorded)"})

    def check(self) -> None:
        from checkpoint_tools.hf_io import parse_size

        check_iteration(self.iteration)
        parse_size(self.max_shard_size)
        check_number("--rope-theta", self.rope_theta, gt=0)
        check_number("--max-position-embeddings", self.max_position_embeddings, ge=1, le=MAX_SEQ_LEN)
        self.rope_scaling_dict()
        check_creatable(self.out, "--out")

    def rope_scaling_dict(self) -> dict | None:
        """``--rope-scaling`` as a dict (``None`` if not given); a ``ConfigError`` if it is not a JSON object."""
        if self.rope_scaling is None:
            return None
        from megatron_vlm.utils.jsonl import parse_json

        value = parse_json(self.rope_scaling, "--rope-scaling", ConfigError)
        if not isinstance(value, dict):
            raise ConfigError(f"--rope-scaling must be a JSON object such as '{{\"factor\": 4.0}}', got {self.rope_scaling!r}")
        return value


@dataclass
class ReshardConfig:
    ckpt: str = field(metadata={"help": "Megatron checkpoint directory to read"})
    out: str = field(metadata={"help": "new Megatron checkpoint directory (must not exist)"})
    target: MegatronTarget = field(default_factory=MegatronTarget)
    iteration: str | None = field(default=None, metadata={"help": "iteration to read (default: the latest)"})
    dtype: str | None = dtype_option()

    def check(self) -> None:
        self.target.check()
        check_iteration(self.iteration)
        check_creatable(self.out, "--out")


@dataclass
class VerifyConfig:
    hf: str = field(metadata={"help": "Hugging Face model directory (the reference)"})
    ckpt: str = field(metadata={"help": "Megatron checkpoint directory to compare with it"})
    image: list[str] | None = field(default=None, metadata={
        "repeat": True, "metavar": "PATH",
        "help": "an image for the probe; repeat for several (default: built-in images of several sizes)"})
    prompt: str | None = field(default=None, metadata={"help": "probe text (default: a built-in prompt)"})
    atol: float = field(default=1e-3, metadata={"help": "fail (exit 1) when the max abs logit difference exceeds this"})
    iteration: str | None = field(default=None, metadata={"help": "iteration to verify (default: the latest)"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of text"})

    def check(self) -> None:
        check_number("--atol", self.atol, ge=0)
        check_iteration(self.iteration)


def check_iteration(iteration: str | None) -> None:
    """``--iteration`` is a step number or ``release``."""
    if iteration is not None and iteration != "release" and not re.fullmatch(r"[0-9]{1,18}", str(iteration)):
        raise ConfigError(f"--iteration must be a step number or 'release', got {iteration!r}")
