"""The plan of a ``longvlm synth`` run: which instances it attempts, in which order, in which shard.

Every instance gets a seed derived from (``--seed``, doc_id, task, sample index), so a rerun samples
the same segments and pages. With ``--num-shards N`` the documents are dealt round-robin to N shards;
a shard attempts its documents' instances in the order of the unsharded plan, so ``--merge`` can put
the shards' outputs back into that order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

from megatron_vlm.formats.tasks import task_kind
from preprocess.synth.config import SynthConfig, SynthError, parse_range
from preprocess.synth.segments import Segment, sample_segment


@dataclass(frozen=True)
class Job:
    task: str
    doc: dict
    sample: int  # index of this instance among the document's instances of this task
    seed: int
    segment: Segment | None  # kinds planned by "segment" (VQA) only


def job_seed(seed: int, doc_id: str, task: str, sample: int) -> int:
    digest = hashlib.sha256(f"{seed}:{doc_id}:{task}:{sample}".encode()).hexdigest()
    return int(digest[:15], 16)


def plan_keys(docs: list[dict], config: SynthConfig) -> Iterator[tuple[int, str, int]]:
    """``(document index, task, sample)`` of every instance to attempt by all shards, in output order
    (per document, or per task with ``--per-task``).

    A kind planned per ``document`` (``ocr-full``) has one possible instance per document, so it is
    planned once per document.
    """
    tasks = config.task_list()
    if config.per_task is None:
        keys = ((d, task, k) for d in range(len(docs)) for task in tasks for k in range(config.per_doc))
    else:  # each task visits the documents in its own seeded order, so a small target is not biased
        orders = {t: sorted(range(len(docs)), key=lambda d, t=t: job_seed(config.seed, docs[d]["doc_id"], t, -1))
                  for t in tasks}
        keys = ((orders[task][i % len(docs)], task, i // len(docs)) for task in tasks for i in range(config.per_task))
    return ((d, task, k) for d, task, k in keys if not (k > 0 and task_kind(task).planner == "document"))


def shard_of(doc_index: int, num_shards: int) -> int:
    """The shard that makes a document's instances: documents are dealt round-robin in pool order, so all
    instances of a document (and its duplicate-question check) stay in one shard."""
    return doc_index % num_shards


def own_keys(docs: list[dict], config: SynthConfig) -> Iterator[tuple[int, str, int]]:
    """The :func:`plan_keys` of this run's ``--shard``."""
    return (key for key in plan_keys(docs, config) if shard_of(key[0], config.num_shards) == config.shard)


def plan(docs: list[dict], config: SynthConfig) -> Iterator[Job]:
    """Every instance this run attempts, in output order, with its seed and (VQA) sampled segment."""
    low, high = parse_range(config.segment_pages, "segment-pages")
    for d, task, k in own_keys(docs, config):
        doc = docs[d]
        seed = job_seed(config.seed, doc["doc_id"], task, k)
        segment = sample_segment(doc, random.Random(seed), low, high) if task_kind(task).planner == "segment" else None
        yield Job(task, doc, k, seed, segment)


def plan_size(num_docs: int, config: SynthConfig) -> int:
    """``len(list(plan(...)))`` of an unsharded run without sampling anything."""
    per_task = config.per_doc * num_docs if config.per_task is None else config.per_task
    return sum(min(per_task, num_docs) if task_kind(t).planner == "document" else per_task for t in config.task_list())


def open_pool(path: str):
    from megatron_vlm.formats.pool import Pool, PoolFormatError

    try:
        return Pool.open(path)
    except PoolFormatError as err:
        raise SynthError(str(err)) from None
