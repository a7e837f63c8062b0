"""The parallel layout: how a model is split over processes. One home for TP/PP/CP/SP/VPP.

The runtime builds Megatron-Core's process groups from it, the model config copies it into the
``TransformerConfig``s, the converter validates and pads checkpoints for it, the trainer and the
tuner choose it. Data parallelism is what is left: ``world_size / (tp * pp * cp)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megatron_vlm.errors import ConfigError
from megatron_vlm.utils.checks import MAX_GPUS


@dataclass(frozen=True)
class ParallelLayout:
    """Megatron-Core's model-parallel sizes (``--tensor-model-parallel-size`` and friends)."""

    tp: int = field(default=1, metadata={"help": "tensor-parallel size (Megatron's tensor_model_parallel_size)"})
    pp: int = field(default=1, metadata={"help": "pipeline-parallel size (pipeline_model_parallel_size)"})
    cp: int = field(default=1, metadata={
        "help": "context-parallel size: each rank holds 2 of 2*cp load-balanced chunks of every row"})
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
            if not isinstance(value, int) or not 1 <= value <= MAX_GPUS:
                raise ConfigError(f"parallel.{name}={value!r}: must be a positive integer (at most {MAX_GPUS:,})")
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

    @property
    def sequence_multiple(self) -> int:
        """Every row length must be a multiple of this: 2*cp load-balanced chunks (cp > 1), and each
        rank's part divisible by tp under sequence parallelism."""
        return math.lcm(2 * self.cp if self.cp > 1 else 1, self.cp * self.tp if self.sp else 1)

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

    def check_sequence_length(self, seq_len: int, model_max_length: int | None = None) -> None:
        """A packed row length works with this layout and the model's RoPE length, else a ``ConfigError``."""
        if model_max_length is not None and seq_len > model_max_length:
            raise ConfigError(f"rows of {seq_len:,} tokens are longer than the model's {model_max_length:,} "
                              "(its RoPE target length); raise it (recipe key model.rope.target_length, with model.rope.mode=ntk "
                              "for the base) or build shorter rows")
        if seq_len % self.sequence_multiple:
            raise ConfigError(f"sequence length {seq_len:,} is not a multiple of {self.sequence_multiple} "
                              f"(2*cp={2 * self.cp} chunks{', times tp under sequence parallelism' if self.sp else ''})")

    def pad_length(self, length: int) -> int:
        """The smallest row length >= ``length`` that this layout accepts (padding costs compute)."""
        m = self.sequence_multiple
        return -(-length // m) * m
