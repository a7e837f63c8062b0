"""Test hook: stop this process at a named point of a long job, to test what survives a kill there.

Set ``LONGVLM_TEST_STOP_AT=POINT[#N][:SIGNAL]`` and the N-th time (default: the first) this process
reaches ``stop_point(POINT)`` it sends itself SIGNAL (default ``KILL``):

- ``KILL``: ``kill -9`` of this process only (its worker processes live on, as after the OOM killer);
- ``INT``: SIGINT to its whole process group, as Ctrl-C in a terminal does;
- ``TERM``: SIGTERM to this process (SLURM preemption, ``kill``).

Tests use it to force the kill window precisely instead of sleeping. The points are listed in
docs ("What survives a kill" of each command). Unset, ``stop_point`` costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "LONGVLM_TEST_STOP_AT"
_reached: dict[str, int] = {}


def stop_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, sig = spec.partition(":")
    point, _, nth = point.partition("#")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] != int(nth or 1):
        return
    sig = sig or "KILL"
    if sig == "INT":
        os.killpg(os.getpgrp(), signal.SIGINT)
    else:
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))
