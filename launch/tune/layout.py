"""A candidate training layout: Megatron-Core's parallel layout plus the settings that trade memory for time.

The model-parallel sizes are a :class:`~megatron_vlm.parallel.ParallelLayout` (the one the runtime,
the model and the trainer use); data parallelism, the micro-batch and activation recomputation
complete it. Pipeline stages split the language layers as Megatron-Core does
(``get_num_layers_to_build``): the first stage gets ``first_stage_layers`` (it also holds the
vision tower and the embedding), the others share the rest equally.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from megatron_vlm.parallel import ParallelLayout

# the selective recompute module sets the tuner weighs (model.recompute_modules): the attention core, the
# element-wise parts (norm outputs, the SwiGLU's output: little compute), both
SELECTIVE_SETS = (("core_attn",), ("layernorm", "act"), ("core_attn", "layernorm", "act"))
_SHORT = {"core_attn": "attn", "layernorm": "norm", "act": "act", "mlp": "mlp"}


@dataclass(frozen=True)
class Layout:
    parallel: ParallelLayout
    dp: int = 1
    micro_batch: int = 1      # rows per micro-batch
    recompute: str = "none"   # none | selective (recompute_modules) | full (every layer)
    recompute_modules: tuple[str, ...] = ()  # selective: Megatron's core_attn, layernorm, mlp and act

    @classmethod
    def make(cls, tp: int = 1, pp: int = 1, cp: int = 1, dp: int = 1, micro_batch: int = 1, recompute: str = "none",
             first_stage_layers: int | None = None, recompute_modules: tuple[str, ...] = (),
             cp_comm_type: str | None = None) -> Layout:
        """A layout with sequence parallelism on whenever TP > 1 (it only saves memory and traffic)."""
        parallel = ParallelLayout(tp=tp, pp=pp, cp=cp, sp=tp > 1, first_stage_layers=first_stage_layers,
                                  cp_comm_type=cp_comm_type if cp > 1 else None)
        if recompute == "selective" and not recompute_modules:
            recompute_modules = ("core_attn",)
        return cls(parallel, dp=dp, micro_batch=micro_batch, recompute=recompute,
                   recompute_modules=tuple(recompute_modules) if recompute == "selective" else ())

    @property
    def recompute_label(self) -> str:
        """``none``, ``full`` or the selective modules (``attn+norm+act``)."""
        if self.recompute != "selective":
            return self.recompute
        return "+".join(_SHORT[m] for m in self.recompute_modules)

    @property
    def tp(self) -> int:
        return self.parallel.tp

    @property
    def pp(self) -> int:
        return self.parallel.pp

    @property
    def cp(self) -> int:
        return self.parallel.cp

    @property
    def sp(self) -> bool:
        return self.parallel.sp

    @property
    def first_stage_layers(self) -> int | None:
        return self.parallel.first_stage_layers

    @property
    def gpus(self) -> int:
        return self.parallel.model_parallel_size * self.dp

    def stage_layers(self, num_layers: int) -> list[int]:
        """Language layers on each pipeline stage (Megatron-Core's uneven-first-stage rule)."""
        pp, first = self.pp, self.first_stage_layers
        if pp == 1:
            return [num_layers]
        if first is None:
            return [num_layers // pp] * pp
        return [first] + [(num_layers - first) // (pp - 1)] * (pp - 1)

    def label(self) -> str:
        comm = f"({self.parallel.cp_comm_type})" if self.cp > 1 and self.parallel.cp_comm_type else ""
        return f"TP{self.tp} PP{self.pp} CP{self.cp}{comm} DP{self.dp}"

    def to_dict(self) -> dict:
        return {**asdict(self.parallel), "dp": self.dp, "micro_batch": self.micro_batch, "recompute": self.recompute,
                "recompute_modules": list(self.recompute_modules)}
