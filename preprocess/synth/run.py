"""``longvlm synth``: plan the instances, generate them with bounded concurrency, validate, write.

Every instance gets a seed derived from (``--seed``, doc_id, task, sample index), so a rerun samples
the same segments and pages and (with the response cache) writes byte-identical output. Results are
validated and written in plan order while later requests are still in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from megatron_vlm.utils.atomic import atomic_write, write_json
from megatron_vlm.utils.stop_points import stop_point
from preprocess.synth.config import VQA_TASKS, SynthConfig, SynthError, parse_range
from preprocess.synth.generators import QARequest, make_generator
from preprocess.synth.ocr import PROMPT_VERSION as OCR_PROMPT_VERSION
from preprocess.synth.ocr import ocr_full, ocr_needle
from preprocess.synth.segments import Segment, sample_segment
from preprocess.synth.summary import Summary
from preprocess.synth.validate import DuplicateFilter, Rejected, check_qa

OCR_GENERATOR = {"name": "layout", "model": None, "prompt_version": OCR_PROMPT_VERSION}


@dataclass(frozen=True)
class Job:
    task: str
    doc: dict
    sample: int  # index of this instance among the document's instances of this task
    seed: int
    segment: Segment | None  # VQA tasks only


@dataclass
class SynthResult:
    output: Path
    rejected_path: Path
    summary_path: Path
    summary: dict  # per task: accepted, rejected, reasons
    table: str  # the summary as a printable table
    generator_stats: dict = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return sum(t["accepted"] for t in self.summary.values())

    @property
    def rejected(self) -> int:
        return sum(t["rejected"] for t in self.summary.values())


def job_seed(seed: int, doc_id: str, task: str, sample: int) -> int:
    digest = hashlib.sha256(f"{seed}:{doc_id}:{task}:{sample}".encode()).hexdigest()
    return int(digest[:15], 16)


def plan(docs: list[dict], config: SynthConfig) -> Iterator[Job]:
    """Every instance to attempt, in output order (per document, or per task with ``--per-task``).

    ``ocr-full`` has one possible instance per document, so it is planned once per document.
    """
    low, high = parse_range(config.segment_pages, "segment-pages")
    tasks = config.task_list()
    if config.per_task is None:
        keys = ((doc, task, k) for doc in docs for task in tasks for k in range(config.per_doc))
    else:  # each task visits the documents in its own seeded order, so a small target is not biased
        orders = {t: sorted(docs, key=lambda d, t=t: job_seed(config.seed, d["doc_id"], t, -1)) for t in tasks}
        keys = ((orders[task][i % len(docs)], task, i // len(docs)) for task in tasks for i in range(config.per_task))
    for doc, task, k in keys:
        if task == "ocr-full" and k > 0:
            continue
        seed = job_seed(config.seed, doc["doc_id"], task, k)
        segment = sample_segment(doc, random.Random(seed), low, high) if task in VQA_TASKS else None
        yield Job(task, doc, k, seed, segment)


def plan_size(num_docs: int, config: SynthConfig) -> int:
    """``len(list(plan(...)))`` without sampling anything."""
    per_task = config.per_doc * num_docs if config.per_task is None else config.per_task
    return sum(min(per_task, num_docs) if t == "ocr-full" else per_task for t in config.task_list())


def instance_id(doc_id: str, task: str, question: str) -> str:
    return hashlib.sha256(f"{doc_id}\0{task}\0{question}".encode()).hexdigest()[:20]


def side_paths(output: Path) -> tuple[Path, Path]:
    """``TASKS.jsonl`` -> (``TASKS.rejected.jsonl``, ``TASKS.summary.json``)."""
    stem = output.name[:-len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.rejected.jsonl"), output.with_name(f"{stem}.summary.json")


def _open_pool(path: str):
    from megatron_vlm.formats.pool import Pool, PoolFormatError

    try:
        return Pool.open(path)
    except PoolFormatError as err:
        raise SynthError(str(err)) from None


def run_synth(config: SynthConfig, pool=None) -> SynthResult:
    """Run the stage; ``pool`` (a :class:`preprocess.pool.Pool`) defaults to ``Pool.open(config.pool)``."""
    config.validate()
    pool = pool if pool is not None else _open_pool(config.pool)
    docs = list(pool.documents)
    if not docs:
        raise SynthError(f"pool {config.pool} has no documents")
    tasks = config.task_list()
    needle = parse_range(config.needle_pages, "needle-pages")
    generator = make_generator(config) if any(t in VQA_TASKS for t in tasks) else None

    def work(job: Job) -> dict:
        if job.task == "ocr-full":
            return ocr_full(pool, job.doc)
        if job.task == "ocr-needle":
            return ocr_needle(pool, job.doc, random.Random(job.seed), *needle)
        return generator.generate(pool, QARequest(job.task, job.doc, job.segment, job.seed))

    def attempt(job: Job):
        try:
            return work(job), None
        except Rejected as rejection:
            return None, rejection

    output = Path(config.output)
    rejected_path, summary_path = side_paths(output)
    summary, dedup = Summary(tasks), DuplicateFilter()
    pool_exec = ThreadPoolExecutor(max_workers=config.concurrency)
    with atomic_write(output) as out, atomic_write(rejected_path) as rej, \
            _cancel_on_error(pool_exec), \
            tqdm(total=plan_size(len(docs), config), desc="synth", unit="inst", disable=not config.progress) as bar:
        window: deque = deque()

        def finish() -> None:
            job, future = window.popleft()
            result, rejection = future.result()
            try:
                if rejection is not None:
                    raise rejection
                info = generator.info(job.task) if job.task in VQA_TASKS else OCR_GENERATOR
                record = _accept(job, result, dedup, info)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                summary.accept(job.task)
            except Rejected as r:
                summary.reject(job.task, r.reason)
                rej.write(json.dumps({"task": job.task, "doc_id": job.doc["doc_id"], "sample": job.sample,
                                      "reason": r.reason, "detail": r.detail,
                                      "segment": job.segment.to_json() if job.segment else None},
                                     ensure_ascii=False) + "\n")
            bar.update(1)
            bar.set_postfix(accepted=summary.accepted(), rejected=summary.rejected(), refresh=False)
            stop_point("synth.instance")

        for job in plan(docs, config):
            window.append((job, pool_exec.submit(attempt, job)))
            if len(window) >= 2 * config.concurrency:
                finish()
        while window:
            finish()

    stats = generator.stats() if generator is not None else {}
    report = {"config": asdict(config), "summary": summary.to_json(),
              "generator_stats": stats, "table": summary.table()}
    write_json(summary_path, report)
    return SynthResult(output, rejected_path, summary_path, summary.to_json(), summary.table(), stats)


@contextlib.contextmanager
def _cancel_on_error(executor: ThreadPoolExecutor) -> Iterator[None]:
    """Shut the executor down; on an error or Ctrl-C, cancel the requests not yet started."""
    try:
        yield
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown()


def _accept(job: Job, result: dict, dedup: DuplicateFilter, generator_info: dict) -> dict:
    """Validate one result -> the output record."""
    if job.task in VQA_TASKS:
        qa = check_qa(job.task, result, job.segment)
        segment = job.segment.to_json()
    else:
        qa, segment = result, result["segment"]
    dedup.check(job.doc["doc_id"], qa["question"])
    return {"id": instance_id(job.doc["doc_id"], job.task, qa["question"]), "task": job.task,
            "doc_id": job.doc["doc_id"], "question": qa["question"], "answer": qa["answer"],
            "evidence_pages": qa["evidence_pages"], "evidence": qa.get("evidence", ""), "segment": segment,
            "generator": generator_info}
