"""Preemption: a signal (SLURM's ``--signal=USR1@120``, a ``scancel``, SIGTERM) asks the run to save at
the end of the current step and exit with :data:`REQUEUE_EXIT`, which a job script requeues on.

The handler only sets a flag; every step the ranks agree on it (a MAX all-reduce of one number), so
all of them save the same step even when the signal reached only some.
"""

from __future__ import annotations

import signal

import torch

from megatron_vlm.runtime import device

REQUEUE_EXIT = 75  # EX_TEMPFAIL: "try again later"; docs/training.md and the SLURM script use it


class PreemptionHandler:
    """Installs handlers for ``names`` (e.g. ``["SIGTERM", "SIGUSR1"]``) and restores the old ones on close."""

    def __init__(self, names: list[str]):
        self.received: str | None = None
        self._old = {}
        for name in names:
            signum = getattr(signal, name)
            self._old[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def agreed(self) -> bool:
        """True on every rank once any rank got a signal (a collective: call it on all ranks each step)."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
