"""``longvlm synth POOL_DIR --merge SHARD.jsonl... -o TASKS.jsonl``: join the outputs of all shards.

Each shard (``--shard K --num-shards N``) attempted the instances of its documents in the order of
the unsharded plan, and wrote each attempt either to its ``TASKS.jsonl`` or to its
``TASKS.rejected.jsonl``. Walking the unsharded plan of the pool and taking every instance from its
document's shard gives the files one unsharded run writes, byte for byte; the summary adds up.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from megatron_vlm.utils.atomic import atomic_write
from preprocess.synth.config import SynthConfig, SynthError
from preprocess.synth.plan import open_pool, plan_keys, plan_size, shard_of
from preprocess.synth.summary import Summary, SynthResult, side_paths, write_summary


class _Shard:
    """One shard's two output files, read line by line in step with the plan."""

    def __init__(self, path: str):
        self.path = Path(path)
        rejected, summary = side_paths(self.path)
        if not summary.is_file():
            raise SynthError(f"shard {self.path}: no {summary.name}, so it did not finish; rerun that shard")
        report = json.loads(summary.read_text(encoding="utf-8"))
        self.config = SynthConfig(**report["config"])
        self.stats = report.get("generator_stats", {})
        self._files = [open(p, encoding="utf-8") for p in (self.path, rejected)]
        self.accepted, self.rejected = (self._next(f) for f in self._files)

    @staticmethod
    def _next(file) -> tuple[str, dict] | None:
        line = file.readline()
        return (line, json.loads(line)) if line else None

    def take(self, which: int) -> str:
        line = (self.accepted, self.rejected)[which][0]
        if which == 0:
            self.accepted = self._next(self._files[0])
        else:
            self.rejected = self._next(self._files[1])
        return line

    def close(self) -> None:
        for f in self._files:
            f.close()


def _check(shards: list[_Shard]) -> SynthConfig:
    """The shards' common config; an error unless they are all N shards of the same options."""
    counts = {s.config.num_shards for s in shards}
    if len(counts) != 1:
        raise SynthError(f"the shards disagree on --num-shards: {sorted(counts)}")
    n = counts.pop()
    found = sorted(s.config.shard for s in shards)
    if found != list(range(n)):
        missing = sorted(set(range(n)) - set(found))
        repeated = sorted({k for k in found if found.count(k) > 1})
        raise SynthError(f"need each of the {n} shards exactly once; missing {missing}, repeated {repeated}")
    first = shards[0].config.content_options()
    for s in shards[1:]:
        diff = {k: v for k, v in s.config.content_options().items() if v != first[k]}
        if diff:
            raise SynthError(f"shard {s.path} was made with other options than {shards[0].path}: {diff}")
    return shards[0].config


def merge_shards(config: SynthConfig, pool=None) -> SynthResult:
    """Join ``config.merge`` (shard outputs of ``config.pool``) into ``config.output``."""
    shards = [_Shard(p) for p in config.merge]
    try:
        common = _check(shards)
        by_index = {s.config.shard: s for s in shards}
        merged = replace(common, pool=config.pool, output=config.output, shard=0, num_shards=1,
                         merge=[str(s.path) for s in shards], progress=config.progress)
        pool = pool if pool is not None else open_pool(config.pool)
        docs = list(pool.documents)
        summary = Summary(merged.task_list())
        output = Path(config.output)
        with atomic_write(output) as out, atomic_write(side_paths(output)[0]) as rej, \
                tqdm(total=plan_size(len(docs), merged), desc="merge", unit="inst", disable=not config.progress) as bar:
            for d, task, sample in plan_keys(docs, merged):
                shard, doc_id = by_index[shard_of(d, len(shards))], docs[d]["doc_id"]
                head = shard.rejected
                if head is not None and (head[1]["task"], head[1]["doc_id"], head[1]["sample"]) == (task, doc_id, sample):
                    rej.write(shard.take(1))
                    summary.reject(task, head[1]["reason"])
                elif shard.accepted is not None and (shard.accepted[1]["task"], shard.accepted[1]["doc_id"]) == (task, doc_id):
                    out.write(shard.take(0))
                    summary.accept(task)
                else:
                    raise SynthError(f"shard {shard.path} has no {task} instance {sample} of document {doc_id[:16]}... "
                                     f"where the plan of {config.pool} expects it: made from another pool?")
                bar.update(1)
            for s in shards:
                if s.accepted or s.rejected:
                    raise SynthError(f"shard {s.path} has instances the plan of {config.pool} does not: made from "
                                     "another pool?")
    finally:
        for s in shards:
            s.close()
    stats = Counter()
    for s in shards:
        stats.update(s.stats)
    return write_summary(merged, summary, dict(stats))
