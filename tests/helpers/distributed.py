"""Run a script or module on N local processes, as torchrun would on one node (gloo on CPU).

Usage from a test (``tests/`` is on ``sys.path`` under pytest)::

    from helpers.distributed import read_rank_results, run_distributed

    def test_tp2(tmp_path):
        run_distributed("tests/workers/my_worker.py", 2, ["--out", tmp_path])
        rank0, rank1 = read_rank_results(tmp_path, 2)   # each rank wrote rank{RANK}.json

``target`` is a path to a ``.py`` file (relative paths are taken from the repository root) or a
dotted module name (run with ``-m``). Each worker gets torchrun's ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` (a free port), ``OMP_NUM_THREADS=1`` and the
repository root on ``PYTHONPATH``, so ``megatron_vlm.runtime.initialize_distributed()`` picks the
layout up. Workers hand results back by writing files (e.g. ``rank{RANK}.json`` in a folder passed
as an argument) or by printing. Returns the finished process (``stdout``/``stderr`` of all ranks
together); raises ``RuntimeError`` with the tail of both streams if any rank fails or the run
exceeds ``timeout`` seconds (the whole process group is killed then). ``wait_for`` polls until
another process has written what a test waits for.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_distributed(target: str | os.PathLike, nprocs: int = 2, args: list[str] | tuple = (), *,
                    timeout: float = 180, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess:
    """Launch ``python -m torch.distributed.run --nproc-per-node nprocs target *args`` and wait."""
    target = str(target)
    script = Path(target) if target.endswith(".py") else None
    if script is not None and not script.is_absolute():
        script = REPO_ROOT / script
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}",
           "--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    cmd += [str(script)] if script is not None else ["-m", target]
    cmd += [str(a) for a in args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise RuntimeError(f"{target} on {nprocs} processes timed out after {timeout} s\n"
                           f"--- stdout ---\n{stdout[-5000:]}\n--- stderr ---\n{stderr[-10000:]}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{target} on {nprocs} processes failed (exit {proc.returncode})\n"
                           f"--- stdout ---\n{stdout[-5000:]}\n--- stderr ---\n{stderr[-10000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def read_rank_results(folder: str | os.PathLike, nprocs: int) -> list:
    """The ``rank{R}.json`` files the workers wrote into ``folder``, in rank order."""
    return [json.loads((Path(folder) / f"rank{rank}.json").read_text()) for rank in range(nprocs)]


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
