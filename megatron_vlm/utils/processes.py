"""Worker processes and Ctrl-C: only the parent acts on it."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Processes started (spawned or forked) inside this block ignore SIGINT for good.

    Ctrl-C sends SIGINT to the whole foreground process group; the parent alone should stop the
    run (and stop its workers), without a traceback from every worker. Children inherit the
    ignored disposition; a Ctrl-C arriving meanwhile is held and reaches the parent after the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
