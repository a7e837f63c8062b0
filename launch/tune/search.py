"""Enumerate the layouts that can run, predict memory and time for each, rank the ones that fit.

A layout can run when Megatron-Core can build it: TP divides the attention heads and KV groups of
both towers, both MLP widths and the vocabulary; the language layers split over the pipeline
stages with the chosen first-stage count (``ParallelLayout.check_model``); the global batch splits
into DP x micro-batch; the layer choices, CP communication and recompute modules run together
(``megatron_vlm.models.config.backend_problems``: what ``longvlm train`` refuses is never proposed). It
fits when its most loaded GPU's predicted peak is within the GPU memory. The first stage's layer count
is chosen per layout to balance the vision tower against the language layers (fastest that fits);
with the ``te`` attention backend and CP each of Transformer Engine's CP communications is weighed.
Feasible layouts are ranked by step time.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from launch.tune.layout import SELECTIVE_SETS, Layout
from launch.tune.memory import (
    GIB,
    Allowances,
    MemoryEstimate,
    ModelStates,
    Setup,
    estimate_memory,
    model_states,
)
from launch.tune.timing import Efficiency, TimeEstimate, estimate_time
from launch.tune.workload import Workload
from megatron_vlm.errors import ConfigError
from megatron_vlm.hardware import GpuSpec
from megatron_vlm.models.config import RECOMPUTE_MODES, backend_problems
from megatron_vlm.models.hf_config import VLArch
from megatron_vlm.parallel import CP_COMM_TYPES


@dataclass(frozen=True)
class Request:
    """What to plan for."""

    gpus: int
    gpus_per_node: int
    global_batch: int                  # rows of workload.seq_length tokens per optimizer step
    gpu: GpuSpec
    setup: Setup = Setup()
    efficiency: Efficiency = Efficiency()
    allowances: Allowances = Allowances()
    micro_batches: tuple[int, ...] = (1, 2)
    recompute: tuple[str, ...] = RECOMPUTE_MODES
    max_tp: int | None = None          # default: GPUs per node
    only_tp: tuple[int, ...] = ()      # restrict the search (empty: all)
    only_pp: tuple[int, ...] = ()
    only_cp: tuple[int, ...] = ()
    loader_workers: int | None = None  # default: build_data_loader's
    prefetch_factor: int | None = None


@dataclass(frozen=True)
class Candidate:
    """A layout with its predicted memory (every stage) and time."""

    layout: Layout
    memory: tuple[MemoryEstimate, ...]
    time: TimeEstimate
    capacity: float

    @property
    def peak(self) -> MemoryEstimate:
        return max(self.memory, key=lambda m: m.total)

    @property
    def fits(self) -> bool:
        return self.peak.total <= self.capacity


@dataclass(frozen=True)
class HostMemory:
    """Host memory of one node: the data loaders' micro-batches in flight."""

    per_gpu: float
    per_node: float
    capacity: float

    @property
    def fits(self) -> bool:
        return self.per_node <= self.capacity


@dataclass
class Plan:
    """The ranked feasible layouts (fastest first), or why none fits."""

    arch: VLArch
    request: Request
    workload: Workload
    ranked: list[Candidate]
    smallest: Candidate | None           # the least memory of all layouts (when none fits)
    smallest_full_recompute: Candidate | None
    rejected: dict[str, int]             # reason -> layouts not buildable for it
    host: HostMemory
    notes: list[str] = field(default_factory=list)
    recipe: object | None = None         # the training recipe the request came from, if any
    written_recipe: Path | None = None   # --write-recipe's file, once written


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def tp_constraints(arch: VLArch) -> dict[str, int]:
    """Sizes TP must divide for Megatron-Core to build both towers (its parallel linears split them evenly)."""
    return {
        "language attention heads": arch.num_heads,
        "language KV groups": arch.num_query_groups,
        "language MLP width": arch.ffn_hidden_size,
        "vision attention heads": arch.vision_heads,
        "vision MLP width": arch.vision_ffn_hidden_size,
        "vocabulary": arch.vocab_size,
    }


def first_stage_options(num_layers: int, pp: int) -> list[int | None]:
    """First-stage language layer counts to try (``None``: no pipeline)."""
    if pp == 1:
        return [None]
    return [k for k in range(1, num_layers + 1) if (num_layers - k) % (pp - 1) == 0 and num_layers - k >= pp - 1]


def host_memory(workload: Workload, request: Request, layout: Layout | None = None, patch_dim: int = 1176) -> HostMemory:
    """Loader micro-batches in flight per GPU process: ``workers x prefetch + 1`` micro-batches of
    float32 pixel values and int64 token arrays. Each process runs its own loader; a first-stage rank
    decodes its 1/(TP x CP) share of the pages (``megatron_vlm.data.image_share``). Planned for a node
    whose GPUs are all first-stage ranks (with PP, the nodes of the first stage)."""
    from megatron_vlm.data.loader import build_data_loader

    defaults = inspect.signature(build_data_loader).parameters
    workers = request.loader_workers if request.loader_workers is not None else defaults["num_workers"].default
    prefetch = request.prefetch_factor if request.prefetch_factor is not None else defaults["prefetch_factor"].default
    row = workload.peak_row
    share = layout.tp * layout.cp if layout else 1
    micro_batch = layout.micro_batch if layout else max(request.micro_batches)
    per_row = 4 * patch_dim * row.patches / share + 44 * row.tokens
    per_gpu = (workers * prefetch + 1) * per_row * micro_batch
    return HostMemory(per_gpu=per_gpu, per_node=per_gpu * request.gpus_per_node,
                      capacity=request.gpu.host_memory_gib * GIB)


class Planner:
    """Evaluates layouts of one model, workload and cluster (model states are cached per split)."""

    def __init__(self, arch: VLArch, workload: Workload, request: Request):
        self.arch, self.workload, self.request = arch, workload, request
        self.flops = workload.mean_flops(arch)
        self._states: dict[tuple, ModelStates] = {}

    def states(self, layout: Layout, stage: int) -> ModelStates:
        key = (layout.tp, layout.pp, layout.first_stage_layers, layout.dp * layout.cp, stage)
        if key not in self._states:
            self._states[key] = model_states(self.arch, layout, self.request.setup, stage)
        return self._states[key]

    def evaluate(self, layout: Layout) -> Candidate:
        """Memory of every stage (for the heaviest row) and the step time (for the mean row)."""
        req, row = self.request, self.workload.peak_row
        m = req.global_batch // (layout.dp * layout.micro_batch)
        states = [self.states(layout, stage) for stage in range(layout.pp)]
        memory = [estimate_memory(self.arch, layout, req.setup, row, stage, m, req.allowances, states[stage])
                  for stage in range(layout.pp)]
        time = estimate_time(self.arch, layout, req.setup, self.workload.mean_row, self.flops,
                             global_batch=req.global_batch, gpu=req.gpu, gpus_per_node=req.gpus_per_node,
                             eff=req.efficiency, states=states)
        return Candidate(layout, tuple(memory), time, req.gpu.memory_gib * GIB)

    def splits(self) -> tuple[list[tuple[int, int, int, int]], dict[str, int]]:
        """Buildable ``(tp, pp, cp, dp)`` and, per reason, how many were not."""
        req, arch = self.request, self.arch
        rejected: dict[str, int] = {}

        def reject(reason: str) -> None:
            rejected[reason] = rejected.get(reason, 0) + 1

        out = []
        max_tp = req.max_tp or req.gpus_per_node
        for tp in _divisors(req.gpus):
            if tp > max_tp or (req.only_tp and tp not in req.only_tp):
                continue
            bad = [name for name, size in tp_constraints(arch).items() if size % tp]
            if bad:
                reject(f"TP {tp} does not divide the {', '.join(bad)}")
                continue
            for pp in _divisors(req.gpus // tp):
                if pp > arch.num_layers or (req.only_pp and pp not in req.only_pp):
                    continue
                for cp in _divisors(req.gpus // (tp * pp)):
                    if req.only_cp and cp not in req.only_cp:
                        continue
                    dp = req.gpus // (tp * pp * cp)
                    if req.global_batch % dp:
                        reject(f"DP {dp} does not divide --global-batch {req.global_batch}")
                    else:
                        out.append((tp, pp, cp, dp))
        return out, rejected

    def recompute_options(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(mode, modules)`` to weigh: the requested modes, selective as each module set that does something
        with these layer choices (no ``layernorm`` with Transformer Engine's fused norms, no ``act`` under FP8)."""
        setup, out = self.request.setup, []
        for mode in self.request.recompute:
            if mode != "selective":
                out.append((mode, ()))
                continue
            for modules in SELECTIVE_SETS:
                kept = tuple(m for m in modules if not (m == "layernorm" and setup.transformer_impl == "te")
                             and not (m == "act" and setup.precision == "fp8"))
                if kept and (mode, kept) not in out:
                    out.append((mode, kept))
        return out

    def cp_comm_types(self, cp: int, tp: int) -> list[str | None]:
        """The CP communications to weigh: Transformer Engine's three with the te backend, else the gather."""
        if cp == 1 or self.request.setup.attention_backend != "te":
            return [None]
        return [c for c in CP_COMM_TYPES if not backend_problems(
            self.request.setup.transformer_impl, "te", Layout.make(tp=tp, cp=cp, cp_comm_type=c).parallel,
            fp8=self.request.setup.precision == "fp8", arch=self.arch)]

    def best_for_split(self, tp: int, pp: int, cp: int, dp: int) -> list[Candidate]:
        """One candidate per (micro-batch, recompute, CP communication): the first-stage layer count that is fastest
        among those that fit (or the least memory if none fits)."""
        req = self.request
        out = []
        for mb in req.micro_batches:
            if req.global_batch % (dp * mb):
                continue
            for (recompute, modules), comm in ((r, c) for r in self.recompute_options()
                                               for c in self.cp_comm_types(cp, tp)):
                options = []
                for k in first_stage_options(self.arch.num_layers, pp):
                    layout = Layout.make(tp=tp, pp=pp, cp=cp, dp=dp, micro_batch=mb, recompute=recompute,
                                         recompute_modules=modules, first_stage_layers=k, cp_comm_type=comm)
                    try:
                        layout.parallel.check_model(self.arch.num_layers, self.arch.num_heads,
                                                    self.arch.num_query_groups, self.arch.vision_heads)
                    except ConfigError:
                        continue
                    options.append(self.evaluate(layout))
                if not options:
                    continue
                fitting = [c for c in options if c.fits]
                out.append(min(fitting, key=lambda c: c.time.step) if fitting
                           else min(options, key=lambda c: c.peak.total))
        return out


def plan(arch: VLArch, workload: Workload, request: Request) -> Plan:
    """Every buildable layout, predicted; the ones that fit ranked by step time."""
    planner = Planner(arch, workload, request)
    splits, rejected = planner.splits()
    candidates = [c for split in splits for c in planner.best_for_split(*split)]
    ranked = sorted((c for c in candidates if c.fits), key=lambda c: c.time.step)
    smallest = smallest_full = None
    if not ranked and candidates:
        smallest = min(candidates, key=lambda c: c.peak.total)
        if smallest.layout.recompute != "full":  # what full recomputation would save, searched or not
            smallest_full = planner.evaluate(replace(smallest.layout, recompute="full", recompute_modules=()))
    host = host_memory(workload, request, ranked[0].layout if ranked else None, arch.family.geometry.patch_dim)
    return Plan(arch=arch, request=request, workload=workload, ranked=ranked, smallest=smallest,
                smallest_full_recompute=smallest_full, rejected=rejected, host=host)
