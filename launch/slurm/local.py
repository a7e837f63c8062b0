"""``longvlm slurm local RECIPE``: the training job on this machine without SLURM (one node, like
``torchrun --standalone``): one ``longvlm train`` process per rank with torchrun's variables.

Unlike torchrun's agent it keeps training's exit contract: SIGTERM and SIGUSR1 are passed on to every
rank and the ranks get all the time they need to save (torchrun kills them 30 s after a signal), and
the exit code is 75 when the ranks saved on a signal. Ctrl-C asks the ranks to save and stop (SIGTERM);
a second Ctrl-C kills them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from launch.slurm.options import LocalRunConfig
from training.signals import REQUEUE_EXIT

KILL_GRACE_S = 10


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_ranks(command: list[str], nproc: int, *, step_wait: float, env: dict[str, str] | None = None) -> int:
    """Run ``command`` on ``nproc`` local ranks; 0 when all succeed, 75 when they saved on a signal, else
    the first failure's exit code (128 + N for a rank killed by signal N). Once a rank has exited, the
    others get ``step_wait`` seconds to follow before they are ended."""
    port = _free_port()
    base = {**os.environ, **(env or {}), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if nproc > 1:  # as torchrun does: N ranks with all cores each would oversubscribe the CPUs
        base.setdefault("OMP_NUM_THREADS", "1")
    procs: list[subprocess.Popen] = []
    sent: list[int] = []  # signals passed on so far

    def send(signum: int) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    def forward(signum, frame) -> None:
        if signum == signal.SIGINT:  # Ctrl-C: save and stop; again: kill
            again = signal.SIGTERM in sent
            signum = signal.SIGKILL if again else signal.SIGTERM
            print(f"\nlongvlm slurm local: {'killing the ranks' if again else 'the ranks save and stop (Ctrl-C again kills them)'}",
                  file=sys.stderr, flush=True)
        sent.append(signum)
        send(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        for r in range(nproc):
            procs.append(subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                                          start_new_session=True))
        for signum in sent:  # a signal that came while the ranks started reaches every one of them
            send(signum)
        first_exit = None
        while any(p.poll() is None for p in procs):
            if first_exit is None and any(p.poll() is not None for p in procs):
                first_exit = time.monotonic()
            if first_exit is not None and time.monotonic() - first_exit > step_wait:
                _end(procs)
                break
            time.sleep(0.2)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    codes = [p.wait() for p in procs]
    codes = [128 - c if c < 0 else c for c in codes]
    failed = [c for c in codes if c not in (0, REQUEUE_EXIT)]
    if failed:
        return failed[0]
    return REQUEUE_EXIT if REQUEUE_EXIT in codes else 0


def _end(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + KILL_GRACE_S
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def default_nproc() -> int:
    import torch

    return torch.cuda.device_count() or 1


def run_local(config: LocalRunConfig) -> int:
    """``longvlm slurm local``: check the recipe for ``nproc`` ranks here, then run them."""
    from training.cli import recipe_path
    from training.config import load_recipe
    from training.trainer import preflight

    config.check()
    nproc = config.nproc_per_node or default_nproc()
    path = recipe_path(config.recipe)
    run_dir = Path(config.output or Path("runs") / path.stem)
    preflight(load_recipe(path, config.overrides), run_dir, nproc)  # one clear error instead of one per rank
    command = [sys.executable, "-m", "longvlm", "train", str(path), "-o", str(run_dir), *config.overrides]
    print(f"longvlm slurm local: {nproc} rank(s) of: longvlm train {path} -o {run_dir} {' '.join(config.overrides)}",
          flush=True)
    return launch_ranks(command, nproc, step_wait=config.step_wait)
