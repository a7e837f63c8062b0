"""Counts of accepted and rejected instances per task and reason, the end-of-run table, and the run's
output files (``TASKS.jsonl`` with its ``.rejected.jsonl`` and ``.summary.json``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_vlm.utils.atomic import write_json
from preprocess.synth.config import SynthConfig
from preprocess.synth.validate import REASONS


class Summary:
    def __init__(self, tasks: list[str]):
        self.tasks = list(tasks)
        self.counts: dict[str, Counter] = {t: Counter() for t in tasks}

    def accept(self, task: str) -> None:
        self.counts[task]["accepted"] += 1

    def reject(self, task: str, reason: str) -> None:
        self.counts[task][reason] += 1

    def accepted(self, task: str | None = None) -> int:
        return sum(self.counts[t]["accepted"] for t in ([task] if task else self.tasks))

    def rejected(self, task: str | None = None) -> int:
        return sum(n for t in ([task] if task else self.tasks) for r, n in self.counts[t].items() if r != "accepted")

    def to_json(self) -> dict:
        return {t: {"accepted": self.accepted(t), "rejected": self.rejected(t),
                    "reasons": {r: self.counts[t][r] for r in REASONS if self.counts[t][r]}} for t in self.tasks}

    def table(self) -> str:
        reasons = [r for r in REASONS if any(self.counts[t][r] for t in self.tasks)]
        header = ["task", "accepted", "rejected", *reasons]
        rows = [[t, self.accepted(t), self.rejected(t), *(self.counts[t][r] for r in reasons)] for t in self.tasks]
        rows.append(["total", self.accepted(), self.rejected(),
                     *(sum(self.counts[t][r] for t in self.tasks) for r in reasons)])
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 for row in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


@dataclass
class SynthResult:
    output: Path
    rejected_path: Path
    summary_path: Path
    summary: dict  # per task: accepted, rejected, reasons
    table: str  # the summary as a printable table
    generator_stats: dict = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return sum(t["accepted"] for t in self.summary.values())

    @property
    def rejected(self) -> int:
        return sum(t["rejected"] for t in self.summary.values())


def side_paths(output: Path) -> tuple[Path, Path]:
    """``TASKS.jsonl`` -> (``TASKS.rejected.jsonl``, ``TASKS.summary.json``)."""
    stem = output.name[:-len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.rejected.jsonl"), output.with_name(f"{stem}.summary.json")


def write_summary(config: SynthConfig, summary: Summary, stats: dict) -> SynthResult:
    """Write ``TASKS.summary.json`` (last: its presence marks a complete output) and describe the run."""
    output = Path(config.output)
    rejected_path, summary_path = side_paths(output)
    write_json(summary_path, {"config": asdict(config), "summary": summary.to_json(), "generator_stats": stats,
                              "table": summary.table()})
    return SynthResult(output, rejected_path, summary_path, summary.to_json(), summary.table(), stats)
