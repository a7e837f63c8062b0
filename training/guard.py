"""Bad losses: a NaN/inf loss or a spike beyond ``spike_factor`` x the recent mean, reported with the
step and the samples of the global batch, and then skipped, stopped at, or only reported (``guard.*``)."""

from __future__ import annotations

import math

from megatron_vlm.errors import LongVLMError
from training.config import GuardSettings


class TrainingStopped(LongVLMError, RuntimeError):
    """The guard stopped the run (``on_nan`` / ``on_spike`` = ``stop``); the message says why and where."""


class LossGuard:
    """Judges each step's loss; keeps the window of recent good losses (saved with checkpoints)."""

    def __init__(self, settings: GuardSettings, recent: list[float] | None = None):
        self.settings = settings
        self.recent = list(recent or [])

    def judge(self, loss: float) -> tuple[str, str] | None:
        """``None`` for a good loss, else ``(action, what)`` with action ``stop``/``skip``/``warn``."""
        if not math.isfinite(loss):
            return self.settings.on_nan, f"loss is {loss}"
        window = self.recent[-self.settings.spike_window:]
        if self.settings.spike_factor and len(window) >= min(5, self.settings.spike_window):
            mean = sum(window) / len(window)
            if loss > self.settings.spike_factor * mean:
                return self.settings.on_spike, (f"loss {loss:.4f} is above {self.settings.spike_factor:g} x the "
                                                f"mean {mean:.4f} of the last {len(window)} steps")
        return None

    def accept(self, loss: float) -> None:
        self.recent = (self.recent + [loss])[-self.settings.spike_window:]
