"""A candidate training layout: how the model and the batch are split over the GPUs.

The parallel sizes (TP, PP, CP, DP, SP, first-stage layers) are Megatron-Core's; micro-batch and
recompute are the training settings that trade memory for time. Pipeline stages split the language
layers as Megatron-Core does (``get_num_layers_to_build``): the first stage gets
``first_stage_layers`` (it also holds the vision tower and the embedding), the others share the
rest equally.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

RECOMPUTE_MODES = ("none", "selective", "full")


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    micro_batch: int = 1                 # rows of --seq-len per micro-batch
    recompute: str = "none"              # none | selective (core attention) | full (every layer)
    first_stage_layers: int | None = None  # language layers on pipeline stage 0 (None: an equal share)

    @property
    def sp(self) -> bool:
        """Sequence parallelism: always on with TP > 1 (it only saves memory and traffic)."""
        return self.tp > 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    def stage_layers(self, num_layers: int) -> list[int]:
        """Language layers on each pipeline stage (Megatron-Core's uneven-first-stage rule)."""
        if self.pp == 1:
            return [num_layers]
        if self.first_stage_layers is None:
            if num_layers % self.pp:
                raise ValueError(f"{num_layers} layers do not split into {self.pp} equal stages")
            return [num_layers // self.pp] * self.pp
        rest = num_layers - self.first_stage_layers
        if self.first_stage_layers < 0 or rest < 0 or rest % (self.pp - 1):
            raise ValueError(f"{num_layers} layers with {self.first_stage_layers} on the first stage do not "
                             f"split equally over the other {self.pp - 1} stages")
        return [self.first_stage_layers] + [rest // (self.pp - 1)] * (self.pp - 1)

    def label(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}", f"CP{self.cp}", f"DP{self.dp}"]
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "sp": self.sp}
