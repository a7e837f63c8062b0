"""Options of ``longvlm convert`` (one dataclass per action; each field is one CLI option)."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_vlm.parallel import ParallelLayout

DTYPES = ("bfloat16", "float16", "float32")
_LAYOUT_FIELDS = ("tp", "pp")  # a checkpoint is global: only TP (vocabulary padding) and PP (layers) matter
_DTYPE_HELP = "cast every tensor to this dtype (default: keep the source dtype, e.g. bf16 in -> bf16 out)"


@dataclass
class HFToMegatronConfig:
    hf: str = field(metadata={"help": "Hugging Face model directory (config.json, safetensors + index) of a registered model family (docs/model.md)"})
    out: str = field(metadata={"help": "new Megatron checkpoint directory (must not exist)"})
    layout: ParallelLayout = field(default_factory=ParallelLayout, metadata={
        "fields": _LAYOUT_FIELDS, "help": "the layout the checkpoint is validated and vocabulary-padded for"})
    make_vocab_size_divisible_by: int = field(default=128, metadata={
        "help": "pad the vocabulary to a multiple of this times TP (Megatron's --make-vocab-size-divisible-by)"})
    dtype: str | None = field(default=None, metadata={"help": _DTYPE_HELP, "choices": DTYPES})


@dataclass
class MegatronToHFConfig:
    ckpt: str = field(metadata={"help": "Megatron checkpoint directory (with latest_checkpointed_iteration.txt)"})
    out: str = field(metadata={"help": "new Hugging Face directory (must not exist)"})
    hf_template: str | None = field(default=None, metadata={
        "help": "HF directory whose tokenizer, processor, chat template and generation config are copied "
                "(default: the source directory recorded at import, if it still exists)"})
    iteration: str | None = field(default=None, metadata={
        "help": "iteration to export, a number or 'release' (default: the one in latest_checkpointed_iteration.txt)"})
    dtype: str | None = field(default=None, metadata={"help": _DTYPE_HELP, "choices": DTYPES})
    max_shard_size: str = field(default="5GB", metadata={"help": "largest safetensors shard"})
    rope_theta: float | None = field(default=None, metadata={
        "help": "RoPE base the model was trained with (default: the one recorded in the checkpoint)"})
    rope_scaling: str | None = field(default=None, metadata={
        "help": "JSON object merged into the RoPE scaling parameters, e.g. "
                "'{\"rope_type\": \"yarn\", \"factor\": 4.0}' (default: as recorded)"})
    max_position_embeddings: int | None = field(default=None, metadata={
        "help": "maximum positions the model was trained for (default: as recorded)"})


@dataclass
class ReshardConfig:
    ckpt: str = field(metadata={"help": "Megatron checkpoint directory to read"})
    out: str = field(metadata={"help": "new Megatron checkpoint directory (must not exist)"})
    layout: ParallelLayout = field(default_factory=ParallelLayout, metadata={
        "fields": _LAYOUT_FIELDS, "help": "the new layout to validate and vocabulary-pad for"})
    make_vocab_size_divisible_by: int = field(default=128, metadata={
        "help": "pad the vocabulary to a multiple of this times TP"})
    iteration: str | None = field(default=None, metadata={"help": "iteration to read (default: the latest)"})
    dtype: str | None = field(default=None, metadata={"help": _DTYPE_HELP, "choices": DTYPES})


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
