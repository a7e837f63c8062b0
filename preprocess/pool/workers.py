"""Worker processes with a watchdog: a page that renders too long, or a crash, loses one document.

Each worker (a spawned process) processes whole chunks and reports every document and page it
starts over its own pipe. The parent gives a chunk to each idle worker; if a worker is silent for
more than ``page_timeout`` seconds it is killed and the document it was on is recorded as
``render_timeout``; if it dies, as ``render_crash``. The chunk is then redone by a fresh worker,
which skips the recorded document, so one bad file never loses the others.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from preprocess.pool.config import PoolConfig

POLL_SECONDS = 0.5


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
    while True:
        task = conn.recv()
        if task is None:
            return
        chunk_id, path, items, skips = task
        pages = process_chunk(Path(path), items, config, skips,
                              lambda kind, index, page: conn.send((kind, index, page)))
        conn.send(("done", chunk_id, pages))


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

    def _start(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(asdict(self.config), child), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def _send(self, worker: _Worker, task: ChunkTask) -> None:
        worker.task, worker.current, worker.page, worker.last = task, None, 0, time.monotonic()
        skips = {i["input_index"]: self.incidents[i["input_index"]] for i in task.items
                 if i["input_index"] in self.incidents}
        worker.conn.send((task.chunk_id, str(task.path), task.items, skips))

    def _fail(self, worker: _Worker, reason: str, detail: str, queue: list[ChunkTask]) -> None:
        """Kill a worker, record the document it was on, requeue its chunk, start a replacement."""
        worker.proc.kill()
        worker.proc.join()
        worker.conn.close()
        task = worker.task
        if worker.current is None:
            raise RuntimeError(f"a pool worker died before starting chunk {task.chunk_id} "
                               f"(exit code {worker.proc.exitcode})")
        self.record_incident(worker.current, {"reason": reason, "detail": detail})
        queue.insert(0, task)
        self.workers[self.workers.index(worker)] = self._start()

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
                            self._fail(w, "render_crash",
                                       f"the worker died (exit code {w.proc.exitcode}) on page {w.page}", queue)
                            continue
                    timeout = self.config.page_timeout
                    started = w.task is not None and w.current is not None  # (not while importing)
                    if started and timeout and time.monotonic() - w.last > timeout:
                        self._fail(w, "render_timeout",
                                   f"page {w.page} took more than {timeout:g} s", queue)
        finally:
            self.close()

    def _handle(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        w.last = time.monotonic()
        if kind == "done":
            w.task, w.current = None, None
            self.on_event("chunk", msg[2])
        else:
            w.current, w.page = msg[1], msg[2]
            self.on_event(kind, msg[1])

    def close(self) -> None:
        for w in self.workers:
            if w.proc.is_alive():
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
