"""Building a pool: plan (hash, deduplicate, decontaminate), process chunks, assemble.

Work in progress lives beside the pool in ``.NAME.work`` (``work_dir``): ``plan.json`` (every
input with its SHA-256 and its chunk), ``chunks/chunk-NNNNNN/`` (finished chunks) and
``incidents.json`` (render timeouts and crashes). A rerun with the same inputs and options skips
finished chunks; the assembled pool is identical to an uninterrupted run's. The pool is assembled
in a staging directory and appears at POOL_DIR whole, by one rename; then the work folder goes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megatron_vlm.formats.pool import indexed_dataset_module
from megatron_vlm.utils.atomic import write_json
from megatron_vlm.utils.hashing import sha256_file
from megatron_vlm.utils.stop_points import stop_point
from preprocess.pool.chunk import rejection
from preprocess.pool.config import PoolConfig
from preprocess.pool.discover import discover, shard_indices
from preprocess.pool.outputs import PoolError, PoolSummary, check_output, duplicate, summary, write_pool
from preprocess.pool.store import iter_chunk_documents, read_chunk_results
from preprocess.pool.workers import ChunkTask, WorkerPool


def load_exclude_hashes(path: str | None) -> set[str]:
    """SHA-256 digests, one per line (``sha256sum`` output works too); '#' starts a comment."""
    if not path:
        return set()
    try:
        lines = Path(path).read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise PoolError(f"--exclude-hashes {path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise PoolError(f"--exclude-hashes {path}: {err.strerror or err}") from None
    hashes = set()
    for n, line in enumerate(lines, 1):
        token = line.split("#", 1)[0].strip().split()
        if not token:
            continue
        digest = token[0].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise PoolError(f"--exclude-hashes {path}:{n}: not a SHA-256 hex digest: {token[0]!r}")
        hashes.add(digest)
    return hashes


def _settings(config: PoolConfig, sources: list[str], exclude: set[str]) -> dict:
    """Everything that determines the pool's content (a resumed run must match it)."""
    return {
        "options": config.content_options() | {"exclude_hashes": None},
        "exclude_hashes_sha256": hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest(),
        "inputs_sha256": hashlib.sha256("\n".join(sources).encode()).hexdigest(),
        "num_inputs": len(sources),
        "shard": config.shard,
        "num_shards": config.num_shards,
    }


def _hash_or_none(path: str) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def make_plan(config: PoolConfig, sources: list[str], exclude: set[str], settings: dict) -> dict:
    """Hash the shard's inputs, reject duplicates/contaminated/unreadable ones, cut the rest into chunks."""
    indices = shard_indices(len(sources), config.shard, config.num_shards)
    with ThreadPoolExecutor(max_workers=max(2, config.workers)) as pool:
        digests = list(pool.map(_hash_or_none, [sources[i] for i in indices]))
    first: dict[str, str] = {}
    rejected, todo = [], []
    for index, digest in zip(indices, digests):
        item = {"input_index": index, "source": sources[index], "doc_id": digest}
        if digest is None:
            rejected.append(rejection(item, "unreadable", "the file cannot be read (missing or no permission)"))
        elif digest in exclude:
            rejected.append(rejection(item, "contaminated", "SHA-256 listed in --exclude-hashes"))
        elif digest in first:
            rejected.append(duplicate(item, first[digest]))
        else:
            first[digest] = item["source"]
            todo.append(item)
    # at most --chunk-docs per chunk, and at least ~4 chunks per worker so that all workers get work
    size = max(1, min(config.chunk_docs, len(todo) // (4 * config.workers)))
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    return {"settings": settings, "rejected": rejected, "chunks": chunks}


def _chunk_path(work: Path, chunk_id: int) -> Path:
    return work / "chunks" / f"chunk-{chunk_id:06d}"


def _describe_difference(old: dict, new: dict) -> str:
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key == "options":
            for opt in sorted(set(old.get(key, {})) | set(new.get(key, {}))):
                a, b = old.get(key, {}).get(opt), new.get(key, {}).get(opt)
                if a != b:
                    diffs.append(f"--{opt.replace('_', '-')} {a} (there) vs {b} (now)")
        elif old.get(key) != new.get(key):
            diffs.append(f"{key} differs")
    return "; ".join(diffs)


def work_dir(out: Path) -> Path:
    """The resume state of an unfinished pool at ``out``: ``.NAME.work`` beside it."""
    return out.parent / f".{out.name}.work"


def build_pool(config: PoolConfig) -> PoolSummary:
    """Build (or resume, or confirm) the pool described by ``config``."""
    start = time.monotonic()
    out = Path(config.output)
    complete = check_output(out)
    try:
        sources = discover(config.inputs)
    except (ValueError, OSError) as err:
        raise PoolError(str(err)) from None
    exclude = load_exclude_hashes(config.exclude_hashes)
    settings = _settings(config, sources, exclude)
    work = work_dir(out)
    if complete is not None:
        if complete.get("settings") != settings:
            raise PoolError(f"{out} holds a complete pool built from other inputs or options "
                            f"({_describe_difference(complete.get('settings', {}), settings)}); use another -o")
        if not config.keep_work:  # left by a run killed after it published the pool
            shutil.rmtree(work, ignore_errors=True)
        return summary(out, complete, time.monotonic() - start, already_complete=True)
    plan_path = work / "plan.json"
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
        if plan["settings"] != settings:
            raise PoolError(f"{work} holds an unfinished run with other inputs or options "
                            f"({_describe_difference(plan['settings'], settings)}); rerun it with the "
                            f"same ones, or delete {work} to start over")
    else:
        plan = make_plan(config, sources, exclude, settings)
        write_json(plan_path, plan, indent=None)
    incidents_path = work / "incidents.json"
    incidents = {int(k): v for k, v in json.loads(incidents_path.read_text()).items()} \
        if incidents_path.exists() else {}

    def record_incident(index: int, incident: dict) -> None:
        incidents[index] = incident
        write_json(incidents_path, {str(k): v for k, v in sorted(incidents.items())})

    tasks = [ChunkTask(i, _chunk_path(work, i), items) for i, items in enumerate(plan["chunks"])
             if not _chunk_path(work, i).exists()]
    _process(config, tasks, incidents, record_incident)
    info = _assemble(out, work, plan, config)
    if not config.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return summary(out, info, time.monotonic() - start)


def _process(config: PoolConfig, tasks: list[ChunkTask], incidents: dict, record_incident) -> None:
    if not tasks:
        return
    from tqdm import tqdm

    total = sum(len(t.items) for t in tasks)
    bar = tqdm(total=total, unit="doc", desc="pool", disable=not config.progress, file=sys.stderr,
               dynamic_ncols=True)
    state = {"pages": 0, "t0": time.monotonic()}

    def on_event(kind: str, value: int) -> None:
        if kind == "page":
            state["pages"] += 1
            stop_point("pool.page")
        elif kind == "doc":
            bar.update(1)
        rate = state["pages"] / max(1e-9, time.monotonic() - state["t0"])
        bar.set_postfix_str(f"{state['pages']} pages, {rate:.1f} pages/s", refresh=False)

    # Importing megatron-core (for assembly) takes seconds; do it while the workers render. Joined even on
    # Ctrl-C: a daemon thread still importing at interpreter exit prints a cut-off "Exception in thread".
    importer = threading.Thread(target=indexed_dataset_module, name="import-megatron")
    importer.start()
    try:
        WorkerPool(config, incidents, record_incident, on_event).run(tasks)
    finally:
        bar.close()
        importer.join()


def _assemble(out: Path, work: Path, plan: dict, config: PoolConfig) -> dict:
    """Append the chunks, in input order, to the stores; write manifest, rejected, pool.json; publish."""

    def add_documents(builders) -> tuple[list[dict], list[dict]]:
        rejected = list(plan["rejected"])
        entries = []
        for chunk_id in range(len(plan["chunks"])):
            path = _chunk_path(work, chunk_id)
            results = read_chunk_results(path)
            for r in results:
                if "rejected" in r:
                    rejected.append(r["rejected"])
                else:
                    entries.append(r["entry"])
            for name, builder in builders.items():
                for data, lengths in iter_chunk_documents(path, results, name):
                    builder.add_document(data, lengths)
        _fix_page_starts(entries)
        rejected.sort(key=lambda r: r["input_index"])
        return entries, rejected

    return write_pool(out, add_documents, plan["settings"], config.encoding)


def _fix_page_starts(entries: list[dict]) -> None:
    start = 0
    for entry in entries:
        entry["page_start"] = start
        start += entry["num_pages"]


