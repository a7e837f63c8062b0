"""Counts of accepted and rejected instances per task and reason, and the end-of-run table."""

from __future__ import annotations

from collections import Counter

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
