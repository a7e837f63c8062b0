"""Worker processes with a watchdog: a page that renders too long, or a crash, loses one document.

Each worker (a spawned process) processes whole chunks and reports every document and page it
starts over its own pipe. The parent gives a chunk to each idle worker; if a worker is silent for
more than ``page_timeout`` seconds it is killed and the document it was on is recorded as
``render_timeout``; if it crashes (a segfault in MuPDF, an abort), as ``render_crash``. The chunk
is then redone by a fresh worker, which skips the recorded document, so one bad file never loses
the others.

Infrastructure failures are never a document's fault and never recorded as one: a worker killed
from outside (SIGKILL: the OOM killer or ``kill -9``; SIGTERM) has its chunk redone (the run stops
if the same document gets its worker killed ``MAX_KILLS`` times); a worker whose pipe to the parent
breaks (the parent was killed) exits without writing its chunk; out of memory, disk full and other
``OSError`` s stop the run. Finished chunks are kept, so a rerun resumes and writes the same pool.
Workers ignore SIGINT: on Ctrl-C the parent stops them.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from megatron_vlm.utils.processes import children_ignore_sigint
from megatron_vlm.utils.stop_points import stop_point
from preprocess.pool.config import PoolConfig
from preprocess.pool.outputs import PoolError

POLL_SECONDS = 0.5
MAX_STARTUP_FAILURES = 3  # a chunk whose worker dies this often before its first document: give up
MAX_KILLS = 3  # a document on which workers are killed from outside this often: stop the run
KILL_SIGNALS = {-signal.SIGKILL: "SIGKILL (the out-of-memory killer or kill -9)", -signal.SIGTERM: "SIGTERM"}
INFRASTRUCTURE_EXIT = 75  # a worker's exit status after an infrastructure error it reported (EX_TEMPFAIL)


@dataclass
class ChunkTask:
    chunk_id: int
    path: Path
    items: list[dict]


def _worker_main(config_dict: dict, conn) -> None:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from preprocess.pool.chunk import process_chunk

    config = PoolConfig(**config_dict)

    def notify(kind: str, index: int, page: int) -> None:
        stop_point(f"pool.worker.{kind}")
        conn.send((kind, index, page))

    try:
        while True:
            task = conn.recv()
            if task is None:
                return
            chunk_id, path, items, skips = task
            pages = process_chunk(Path(path), items, config, skips, notify)
            conn.send(("done", chunk_id, pages))
    except (EOFError, ConnectionError):
        return  # the parent is gone (killed or preempted): stop without writing the chunk
    except (OSError, MemoryError) as err:  # disk full, out of memory, ...: not a document's fault
        try:
            conn.send(("infrastructure", -1, f"{type(err).__name__}: {err}"))
        except (OSError, ValueError):
            pass
        sys.exit(INFRASTRUCTURE_EXIT)


@dataclass
class _Worker:
    proc: mp.Process
    conn: object
    task: ChunkTask | None = None
    current: int | None = None  # input index of the document being processed
    page: int = 0
    last: float = field(default_factory=time.monotonic)


class WorkerPool:
    """Runs chunk tasks on ``config.workers`` processes with the page watchdog."""

    def __init__(self, config: PoolConfig, incidents: dict[int, dict],
                 record_incident: Callable[[int, dict], None], on_event: Callable[[str, int], None]):
        self.config = config
        self.incidents = incidents
        self.record_incident = record_incident
        self.on_event = on_event
        self.ctx = mp.get_context("spawn")
        self.workers: list[_Worker] = []
        self.startup_failures: dict[int, int] = {}
        self.kills: dict[int, int] = {}  # input index -> workers killed from outside while on it

    def _start(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(asdict(self.config), child), daemon=True)
        with children_ignore_sigint():
            proc.start()
        child.close()
        return _Worker(proc, parent)

    def _send(self, worker: _Worker, task: ChunkTask) -> None:
        worker.task, worker.current, worker.page, worker.last = task, None, 0, time.monotonic()
        skips = {i["input_index"]: self.incidents[i["input_index"]] for i in task.items
                 if i["input_index"] in self.incidents}
        worker.conn.send((task.chunk_id, str(task.path), task.items, skips))

    def _fail(self, worker: _Worker, reason: str | None, detail: str, queue: list[ChunkTask]) -> None:
        """Stop a worker, record the document it was on (``reason``; ``None``: not the document's
        fault), requeue its chunk, start a replacement."""
        if worker.proc.is_alive():
            worker.proc.kill()
        worker.proc.join()
        worker.conn.close()
        task = worker.task
        if worker.current is None:  # died before its first document: not the document's fault
            failures = self.startup_failures.get(task.chunk_id, 0) + 1
            self.startup_failures[task.chunk_id] = failures
            if failures >= MAX_STARTUP_FAILURES:
                raise PoolError(f"pool workers keep dying before starting chunk {task.chunk_id} "
                                f"(exit code {worker.proc.exitcode})")
        elif reason is not None:
            self.record_incident(worker.current, {"reason": reason, "detail": detail})
        queue.insert(0, task)
        self.workers[self.workers.index(worker)] = self._start()

    def _died(self, worker: _Worker, queue: list[ChunkTask]) -> None:
        """A worker's pipe closed: tell a crash (the document's fault) from a kill (not its fault)."""
        worker.proc.join(timeout=5)
        code = worker.proc.exitcode
        if code == INFRASTRUCTURE_EXIT:
            raise PoolError(f"a pool worker stopped on an infrastructure error (exit code {code}); rerun the same "
                            "command to resume")
        if code not in KILL_SIGNALS:
            self._fail(worker, "render_crash", f"the worker died (exit code {code}) on page {worker.page}", queue)
            return
        doc = worker.current
        if doc is not None:
            self.kills[doc] = self.kills.get(doc, 0) + 1
            if self.kills[doc] >= MAX_KILLS:
                source = next(i["source"] for i in worker.task.items if i["input_index"] == doc)
                raise PoolError(f"pool workers were killed by {KILL_SIGNALS[code]} {MAX_KILLS} times while on "
                                f"{source} (page {worker.page}); if it is memory, use fewer --workers or a "
                                f"lower --max-pixels, or leave the file out (--exclude-hashes)")
        self._fail(worker, None, "", queue)

    def run(self, tasks: list[ChunkTask]) -> None:
        queue = list(tasks)
        self.workers = [self._start() for _ in range(min(self.config.workers, len(queue)))]
        try:
            while queue or any(w.task for w in self.workers):
                for w in self.workers:
                    if w.task is None and queue:
                        self._send(w, queue.pop(0))
                ready = wait([w.conn for w in self.workers if w.task], timeout=POLL_SECONDS)
                for w in list(self.workers):
                    if w.task is None:
                        continue
                    if w.conn in ready:
                        try:
                            while w.conn.poll():
                                self._handle(w, w.conn.recv())
                        except (EOFError, OSError):
                            self._died(w, queue)
                            continue
                    timeout = self.config.page_timeout
                    started = w.task is not None and w.current is not None  # (not while importing)
                    if started and timeout and time.monotonic() - w.last > timeout:
                        self._fail(w, "render_timeout", f"page {w.page} took more than {timeout:g} s", queue)
        except BaseException:
            self.close(wait=False)  # Ctrl-C, an error: the chunks in progress are redone by the rerun
            raise
        self.close()

    def _handle(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        w.last = time.monotonic()
        if kind == "infrastructure":
            raise PoolError(f"a pool worker stopped on {msg[2]} (not a document's fault; fix it and rerun "
                            "the same command to resume)")
        if kind == "done":
            w.task, w.current = None, None
            self.on_event("chunk", msg[2])
        else:
            w.current, w.page = msg[1], msg[2]
            self.on_event(kind, msg[1])

    def close(self, wait: bool = True) -> None:
        """Stop the workers: let idle ones exit (``wait``), else kill them at once."""
        for w in self.workers:
            if w.proc.is_alive() and wait:
                try:
                    w.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
                w.proc.join(timeout=5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        self.workers = []
