"""Choosing which samples (and how often) make up the token budget: task mixture x length target.

Each task ``t`` gets ``weight_t * budget`` tokens. Within a task, samples are drawn bin by bin so
that the example counts follow the length target: every step takes the bin whose count lags its
target share most, and the next sample of that bin's stream. A bin's stream is a seeded random
permutation of its candidates, re-permuted on every pass, so a task whose budget exceeds its
candidates repeats (upsamples) them as evenly as possible, and one with more candidates than budget
takes a random subset. A task stops at the sample count that brings its tokens closest to its
budget, so shares and budget land within half a sample of their targets. Deterministic by seed.
Tasks named in ``own_lengths`` (short-context data) keep their own length distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_vlm.formats.tasks import SYNTH_TASKS
from preprocess.dataset.errors import BuildError
from preprocess.dataset.lengths import LengthTarget

# The paper's final recipe: retrieval-heavy (single- and multi-page extraction) with modest
# reasoning, long-document VQA only (OCR transcription is the weaker supervision).
DEFAULT_MIXTURE = "extract-single=0.4,extract-multi=0.4,reasoning=0.2"


def parse_mixture(spec: str) -> dict[str, float]:
    """``task=weight,...`` -> weights normalized to sum to 1 (token shares)."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in SYNTH_TASKS:
            raise BuildError(f"--mixture: '{part}' is not TASK=WEIGHT with TASK one of {', '.join(SYNTH_TASKS)}")
        try:
            weight = float(value)
        except ValueError:
            raise BuildError(f"--mixture: weight '{value}' of {name} is not a number") from None
        if weight < 0 or name in weights:
            raise BuildError(f"--mixture: {name} is negative or given twice")
        if weight > 0:
            weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise BuildError(f"--mixture {spec!r}: no task with a positive weight")
    return {name: w / total for name, w in weights.items()}


@dataclass
class Selection:
    indices: np.ndarray  # candidate indices, shuffled; repeats allowed
    report: dict


def _bin_targets(target: LengthTarget, bins: np.ndarray) -> np.ndarray:
    nbins = len(target.edges) - 1
    counts = np.bincount(bins[bins >= 0], minlength=nbins).astype(np.float64)
    want = counts / counts.sum() if target.fractions is None else np.asarray(target.fractions, dtype=np.float64)
    want = np.where(counts > 0, want, 0.0)
    if want.sum() <= 0:
        return want
    return want / want.sum()


class _BinStream:
    """Candidates of one (task, length bin) in seeded random order, re-permuted on each pass."""

    def __init__(self, members: np.ndarray, rng: np.random.Generator):
        self.members, self.rng, self.order, self.pos = members, rng, rng.permutation(members), 0

    def next(self) -> int:
        if self.pos == len(self.order):
            self.order, self.pos = self.rng.permutation(self.members), 0
        self.pos += 1
        return int(self.order[self.pos - 1])


def _select_task(lengths: np.ndarray, members: np.ndarray, bins: np.ndarray, want: np.ndarray,
                 budget: float, seed: int, code: int) -> list[int]:
    streams = {b: _BinStream(members[bins == b], np.random.default_rng([seed, code, b]))
               for b in np.flatnonzero(want > 0)}
    counts = np.zeros(len(want))
    chosen: list[int] = []
    tokens = 0
    while True:
        deficit = want * (len(chosen) + 1) - counts
        b = int(np.argmax(np.where(want > 0, deficit, -np.inf)))
        candidate = streams[b].next()
        length = int(lengths[candidate])
        if abs(tokens + length - budget) >= abs(tokens - budget):
            return chosen
        chosen.append(candidate)
        counts[b] += 1
        tokens += length


def _target_of(name: str, target: LengthTarget, own_lengths: frozenset[str]) -> LengthTarget:
    return LengthTarget("own", target.edges, None) if name in own_lengths else target


def _candidates(lengths: np.ndarray, task_codes: np.ndarray, code: int, target: LengthTarget):
    members = np.flatnonzero(task_codes == code)
    bins = target.bin_of(lengths[members]) if len(members) else np.zeros(0, dtype=np.int64)
    return members[bins >= 0], bins[bins >= 0]


def check_repeats(lengths: np.ndarray, task_codes: np.ndarray, task_names: list[str], weights: dict[str, float],
                  target: LengthTarget, budget: float, max_repeats: float,
                  own_lengths: frozenset[str] = frozenset()) -> None:
    """Refuse a budget that needs each sample of some task used more than ``max_repeats`` times on
    average (a recipe mistake, not a default), naming the unique tokens available and the factor."""
    lengths = np.asarray(lengths, dtype=np.int64)
    unique = {name: int(lengths[_candidates(lengths, task_codes, task_names.index(name),
                                            _target_of(name, target, own_lengths))[0]].sum())
              for name in weights}
    unique = {name: tokens for name, tokens in unique.items() if tokens}  # none at all: select_samples says so
    problems = [f"{name} has {tokens:,} unique tokens for {weights[name] * budget:,.0f} "
                f"(x{weights[name] * budget / tokens:,.1f})"
                for name, tokens in unique.items() if weights[name] * budget / tokens > max_repeats]
    if problems:
        fit = min(max_repeats * tokens / weights[name] for name, tokens in unique.items())
        raise BuildError(f"--token-budget {budget:,.0f} needs more than --max-repeats {max_repeats:g} uses of each "
                         f"sample: {'; '.join(problems)}. Lower --token-budget to at most {int(fit):,}, make "
                         "more tasks (longvlm synth), or raise --max-repeats on purpose")


def select_samples(lengths: np.ndarray, task_codes: np.ndarray, task_names: list[str],
                   weights: dict[str, float], target: LengthTarget, budget: int, seed: int,
                   own_lengths: frozenset[str] = frozenset()) -> Selection:
    """Pick sample indices (with repeats) meeting the task token shares, the length target and the budget."""
    lengths = np.asarray(lengths, dtype=np.int64)
    chosen: list[int] = []
    per_task: dict[str, dict] = {}
    missing_bins: dict[str, list[int]] = {}
    for name, weight in weights.items():
        code = task_names.index(name) if name in task_names else -1
        task_target = _target_of(name, target, own_lengths)
        members, bins = _candidates(lengths, task_codes, code, task_target)
        if not len(members):
            raise BuildError(f"--mixture asks for {name} (weight {weight:.3f}) but the tasks files have no "
                             f"usable {name} samples within the length bins")
        want = _bin_targets(task_target, bins)
        if task_target.fractions is not None:
            empty = [i for i, f in enumerate(task_target.fractions) if f > 0 and want[i] == 0]
            if empty:
                missing_bins[name] = empty
        picked = _select_task(lengths, members, bins, want, weight * budget, seed, code)
        chosen.extend(picked)
        uniq = len(set(picked))
        per_task[name] = {"target_share": weight, "tokens": int(lengths[picked].sum()), "samples": len(picked),
                          "unique_samples": uniq, "candidates": int(len(members)),
                          "mean_repeats": len(picked) / max(uniq, 1)}
    total = sum(t["tokens"] for t in per_task.values())
    for t in per_task.values():
        t["achieved_share"] = t["tokens"] / max(total, 1)
    indices = np.asarray(chosen, dtype=np.int64)
    indices = indices[np.random.default_rng([seed, 1 << 20]).permutation(len(indices))]
    report = {
        "budget": int(budget), "tokens": int(total),
        "budget_rel_error": abs(total - budget) / budget,
        "max_share_error": max(abs(t["achieved_share"] - t["target_share"]) for t in per_task.values()),
        "tasks": per_task,
        "unused_tasks": sorted(set(task_names) - set(weights)),
        "length_bins_without_candidates": missing_bins,
    }
    return Selection(indices, report)
