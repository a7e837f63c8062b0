"""The parallel layout: how a model is split over processes. One home for TP/PP/CP/SP/VPP.

The runtime builds Megatron-Core's process groups from it, the model config copies it into the
``TransformerConfig``s, the converter validates and pads checkpoints for it, the trainer and the
tuner choose it. Data parallelism is what is left: ``world_size / (tp * pp * cp)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megatron_vlm.errors import ConfigError

# Transformer Engine's context-parallel communication (Megatron's --cp-comm-type): a ring of K/V
# exchanges overlapped with attention, all-to-all over heads, or all-gathered K/V.
CP_COMM_TYPES = ("p2p", "a2a", "all_gather")
FP8_TOKEN_MULTIPLE = 16  # Transformer Engine's FP8 GEMMs want token counts divisible by this


@dataclass(frozen=True)
class TokenPadding:
    """How a micro-batch's packed stream is padded: each sample to a multiple of ``sample``, the whole
    stream to a multiple of ``stream`` (the padding goes to its last sample)."""

    sample: int = 1
    stream: int = 1

    def pad(self, length: int) -> int:
        return -(-length // self.sample) * self.sample


NO_PADDING = TokenPadding()


@dataclass(frozen=True)
class ParallelLayout:
    """Megatron-Core's model-parallel sizes (``--tensor-model-parallel-size`` and friends)."""

    tp: int = field(default=1, metadata={"help": "tensor-parallel size (Megatron's tensor_model_parallel_size)"})
    pp: int = field(default=1, metadata={"help": "pipeline-parallel size (pipeline_model_parallel_size)"})
    cp: int = field(default=1, metadata={
        "help": "context-parallel size: each rank holds 2 of 2*cp load-balanced chunks of every packed sample"})
    cp_comm_type: str | None = field(default=None, metadata={
        "help": "context-parallel communication of the te attention backend: p2p (K/V ring overlapped with "
                "compute), a2a (all-to-all over heads), all_gather; None: p2p with te, all_gather (the only "
                "one) with the torch backend"})
    sp: bool = field(default=False, metadata={
        "help": "sequence parallelism: norms and dropout on a 1/tp slice of the sequence (needs tp > 1)"})
    vpp: int | None = field(default=None, metadata={
        "help": "virtual pipeline stages per pipeline rank (interleaved schedule); None: not interleaved"})
    first_stage_layers: int | None = field(default=None, metadata={
        "help": "language-model layers on the first pipeline stage, which also runs the vision tower "
                "(Megatron's num_layers_in_first_pipeline_stage); None: an even split"})

    def __post_init__(self):
        for name in ("tp", "pp", "cp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"parallel.{name} must be a positive integer, got {value!r}")
        if self.cp_comm_type is not None and self.cp_comm_type not in CP_COMM_TYPES:
            raise ConfigError(f"parallel.cp_comm_type={self.cp_comm_type!r} is not one of {', '.join(CP_COMM_TYPES)}")
        if self.sp and self.tp == 1:
            raise ConfigError("parallel.sp (sequence parallelism) needs parallel.tp > 1")
        if self.vpp is not None and (self.vpp < 1 or self.pp == 1):
            raise ConfigError(f"parallel.vpp={self.vpp} needs pipeline parallelism (pp > 1) and vpp >= 1")
        if self.first_stage_layers is not None and (self.first_stage_layers < 1 or self.pp == 1):
            raise ConfigError(f"parallel.first_stage_layers={self.first_stage_layers} needs pp > 1 and >= 1 layer")

    @property
    def model_parallel_size(self) -> int:
        """Processes holding one replica of the model: ``tp * pp * cp``."""
        return self.tp * self.pp * self.cp

    def data_parallel_size(self, world_size: int) -> int:
        """``world_size / (tp * pp * cp)``; an error naming the sizes if it does not divide."""
        if world_size % self.model_parallel_size:
            raise ConfigError(f"world size {world_size} is not a multiple of tp*pp*cp = {self.tp}*{self.pp}*{self.cp} "
                              f"= {self.model_parallel_size}; launch a multiple of it, or change parallel.*")
        return world_size // self.model_parallel_size

    def cp_comm_type_for(self, attention_backend: str) -> str:
        """The CP communication actually used with ``attention_backend`` (the torch backend all-gathers K/V)."""
        if self.cp_comm_type is not None:
            return self.cp_comm_type
        return "p2p" if attention_backend == "te" else "all_gather"

    def token_padding(self, fp8: bool = False) -> TokenPadding:
        """Samples padded to 2*cp (cp > 1: each splits into 2*cp chunks); the stream so that each rank's part
        divides over tp under sequence parallelism and, with FP8, into FP8 GEMMs' token multiple."""
        sample = 2 * self.cp if self.cp > 1 else 1
        per_rank = math.lcm(self.tp if self.sp else 1, FP8_TOKEN_MULTIPLE if fp8 else 1)
        return TokenPadding(sample, math.lcm(sample, self.cp * per_rank))

    def check_model(self, num_layers: int, num_heads: int, num_query_groups: int, vision_heads: int) -> None:
        """Raise a ``ConfigError`` listing every way the model cannot be split this way."""
        problems = []
        if num_heads % self.tp or num_query_groups % self.tp:
            problems.append(f"{num_heads} attention heads / {num_query_groups} query groups do not divide over tp={self.tp}")
        if vision_heads % self.tp:
            problems.append(f"{vision_heads} vision-tower heads do not divide over tp={self.tp}")
        stages = self.pp * (self.vpp or 1)
        first = self.first_stage_layers
        if first is not None:
            rest, rest_stages = num_layers - first, self.pp - 1
            if rest < rest_stages or rest % rest_stages:
                problems.append(f"first_stage_layers={first} leaves {rest} of {num_layers} layers, which do not "
                                f"divide evenly over the other {rest_stages} pipeline stage(s)")
        elif num_layers % stages:
            problems.append(f"{num_layers} language-model layers do not divide over pp*vpp={stages} stages "
                            "(set parallel.first_stage_layers for an uneven split)")
        if problems:
            raise ConfigError(f"parallel layout tp={self.tp} pp={self.pp} cp={self.cp}: " + "; ".join(problems))
