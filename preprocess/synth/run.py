"""``longvlm synth``: generate the planned instances with bounded concurrency, validate, write.

A rerun samples the same segments and pages (:mod:`preprocess.synth.plan`) and, with the response
cache, writes byte-identical output. Results are validated and written in plan order while later
requests are still in flight. ``--merge`` joins shard outputs instead (:mod:`preprocess.synth.merge`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from megatron_vlm.formats.tasks import task_kind
from megatron_vlm.utils.atomic import atomic_write
from megatron_vlm.utils.stop_points import stop_point
from preprocess.synth.config import SynthConfig, SynthError, parse_range
from preprocess.synth.generators import QARequest, make_generator
from preprocess.synth.merge import merge_shards
from preprocess.synth.ocr import PROMPT_VERSION as OCR_PROMPT_VERSION
from preprocess.synth.ocr import ocr_full, ocr_needle
from preprocess.synth.plan import Job, open_pool, own_keys, plan, plan_size
from preprocess.synth.summary import Summary, SynthResult, side_paths, write_summary
from preprocess.synth.validate import DuplicateFilter, Rejected, check_qa

OCR_GENERATOR = {"name": "layout", "model": None, "prompt_version": OCR_PROMPT_VERSION}


def instance_id(doc_id: str, task: str, question: str) -> str:
    return hashlib.sha256(f"{doc_id}\0{task}\0{question}".encode()).hexdigest()[:20]


def run_synth(config: SynthConfig, pool=None) -> SynthResult:
    """Run the stage; ``pool`` (a :class:`preprocess.pool.Pool`) defaults to ``Pool.open(config.pool)``."""
    config.validate()
    if config.merge is not None:
        return merge_shards(config, pool)
    pool = pool if pool is not None else open_pool(config.pool)
    docs = list(pool.documents)
    if not docs:
        raise SynthError(f"pool {config.pool} has no documents")
    tasks = config.task_list()
    needle = parse_range(config.needle_pages, "needle-pages")
    generator = make_generator(config) if any(task_kind(t).category == "vqa" for t in tasks) else None
    makers = {  # planner of the task kind -> what makes one instance
        "document": lambda job: ocr_full(pool, job.doc),
        "pages": lambda job: ocr_needle(pool, job.doc, random.Random(job.seed), *needle),
        "segment": lambda job: generator.generate(pool, QARequest(job.task, job.doc, job.segment, job.seed)),
    }

    def work(job: Job) -> dict:
        return makers[task_kind(job.task).planner](job)

    def attempt(job: Job):
        try:
            return work(job), None
        except Rejected as rejection:
            return None, rejection

    output = Path(config.output)
    rejected_path, summary_path = side_paths(output)
    summary, dedup = Summary(tasks), DuplicateFilter()
    total = plan_size(len(docs), config) if config.num_shards == 1 else sum(1 for _ in own_keys(docs, config))
    pool_exec = ThreadPoolExecutor(max_workers=config.concurrency)
    with atomic_write(output) as out, atomic_write(rejected_path) as rej, \
            _cancel_on_error(pool_exec), \
            tqdm(total=total, desc="synth", unit="inst", disable=not config.progress) as bar:
        window: deque = deque()

        def finish() -> None:
            job, future = window.popleft()
            result, rejection = future.result()
            try:
                if rejection is not None:
                    raise rejection
                info = generator.info(job.task) if task_kind(job.task).category == "vqa" else OCR_GENERATOR
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

    return write_summary(config, summary, generator.stats() if generator is not None else {})


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
    if task_kind(job.task).category == "vqa":
        qa = check_qa(job.task, result, job.segment)
        segment = job.segment.to_json()
    else:
        qa, segment = result, result["segment"]
    dedup.check(job.doc["doc_id"], qa["question"])
    return {"id": instance_id(job.doc["doc_id"], job.task, qa["question"]), "task": job.task,
            "doc_id": job.doc["doc_id"], "question": qa["question"], "answer": qa["answer"],
            "evidence_pages": qa["evidence_pages"], "evidence": qa.get("evidence", ""), "segment": segment,
            "generator": generator_info}
