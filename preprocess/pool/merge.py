"""``longvlm pool --merge SHARD_DIR... -o POOL_DIR``: join shard pools into one pool.

The shards must come from the same INPUTs and options with different ``--shard`` of the same
``--num-shards``, all of them present. Documents and rejections are ordered by their index in the
input list and a document found in several shards is kept at its first input position (the others
become ``duplicate`` rejections), so the merged pool equals what one unsharded run writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from megatron_vlm.formats.pool import Pool, PoolFormatError
from preprocess.pool.config import PoolConfig
from preprocess.pool.outputs import PoolError, PoolSummary, check_output, duplicate, write_pool


def _check_shards(pools: list[Pool]) -> dict:
    """The shards' common settings (as an unsharded run would record them)."""
    settings = [dict(p.info["settings"]) for p in pools]
    num_shards = {s["num_shards"] for s in settings}
    if len(num_shards) != 1:
        raise PoolError(f"the shards disagree on --num-shards: {sorted(num_shards)}")
    n = num_shards.pop()
    found = sorted(s["shard"] for s in settings)
    missing = sorted(set(range(n)) - set(found))
    if missing or len(found) != n:
        dup = sorted({s for s in found if found.count(s) > 1})
        raise PoolError(f"need each of the {n} shards exactly once; missing {missing}, repeated {dup}")
    common = []
    for s in settings:
        s.pop("shard")
        s.pop("num_shards")
        common.append(s)
    for p, s in zip(pools, common):
        if s != common[0]:
            raise PoolError(f"shard {p.root} was built from other inputs or options than {pools[0].root}")
    return common[0] | {"shard": 0, "num_shards": 1}


def merge_pools(config: PoolConfig) -> PoolSummary:
    start = time.monotonic()
    out = Path(config.output)
    if check_output(out) is not None:
        raise PoolError(f"{out} already holds a pool; merge into a new directory")
    try:
        pools = [Pool.open(p) for p in config.inputs]
    except PoolFormatError as err:
        raise PoolError(str(err)) from None
    settings = _check_shards(pools)
    records = [(d["input_index"], d, p) for p in pools for d in p.documents]
    records += [(r["input_index"], r, None) for p in pools for r in _read_rejected(p)]
    records.sort(key=lambda t: t[0])
    kept, rejected, first = [], [], {}
    for index, record, pool in records:
        doc_id = record.get("doc_id")
        if pool is None and (doc_id is None or record["reason"] == "contaminated"):
            rejected.append(record)  # decided before deduplication in every run
        elif doc_id in first:  # a later copy of a file: the unsharded run never opened it
            item = {"input_index": index, "source": record["source"], "doc_id": doc_id}
            rejected.append(duplicate(item, first[doc_id]))
        else:
            first[doc_id] = record["source"]
            if pool is None:
                rejected.append(record)
            else:
                kept.append((record, pool))

    def add_documents(builders) -> tuple[list[dict], list[dict]]:
        entries = []
        for doc, pool in kept:
            for name, builder in builders.items():
                store = pool.pages_store if name == "pages" else pool.layout_store
                seqs = [store[doc["page_start"] + i] for i in range(doc["num_pages"])]
                builder.add_document(np.concatenate(seqs), [len(s) for s in seqs])
            entries.append(dict(doc, page_start=builders["pages"].num_sequences - doc["num_pages"]))
        return entries, rejected

    info = write_pool(out, add_documents, settings, pools[0].encoding, merged_from=[str(p.root) for p in pools])
    c = info["counts"]
    return PoolSummary(out, c["inputs"], c["accepted"], c["rejected"], c["pages"], c["image_tokens"],
                       c["rejected_by_reason"], time.monotonic() - start)


def _read_rejected(pool: Pool) -> list[dict]:
    with open(pool.root / "rejected.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
