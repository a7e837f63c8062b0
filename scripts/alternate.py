"""A-versus-B measurements for the benchmark scripts: the sides run in turn, round after round, on
the same inputs, so a change in the machine's load reaches every side alike; reported as the median
of the rounds' ratios with their spread and the load average seen."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable


def alternate(sides: dict[str, Callable[[], float]], rounds: int) -> tuple[dict[str, list[float]], tuple[float, float]]:
    """Call every side once per round, in the order given; each side's values (one per round) and the
    lowest and highest one-minute load average seen before, between and after the calls."""
    values: dict[str, list[float]] = {name: [] for name in sides}
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        for name, side in sides.items():
            values[name].append(side())
            loads.append(os.getloadavg()[0])
    return values, (min(loads), max(loads))


def versus(values: list[float], base: list[float]) -> str:
    """``values`` against ``base``, round by round: the median change and the rounds' range (a change,
    e.g. ``+3.1%``, below 2x; a factor, e.g. ``15.4x``, from there)."""
    ratios = [v / b for v, b in zip(values, base)]
    show = (lambda r: f"{r:.1f}x") if statistics.median(ratios) >= 2 else (lambda r: f"{r - 1:+.1%}")
    return f"{show(statistics.median(ratios))} (rounds {show(min(ratios))} .. {show(max(ratios))})"
