"""``longvlm build``: tasks + pool + tokenizer -> a packed, mixed, length-controlled dataset.

Steps: read and validate the tasks; render and tokenize every sample (exact counts, worker
processes); drop samples longer than ``seq_length``; select samples for the mixture, length target
and budget; pack; write every file atomically with the config, input hashes and report in
``DATA_PREFIX.json``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megatron_vlm.formats import dataset as fmt
from megatron_vlm.formats.pool import pool_fingerprint
from megatron_vlm.formats.tasks import TASK_NAMES, TaskRecord, kinds_of, read_tasks
from megatron_vlm.models.geometry import ImageGeometry
from megatron_vlm.models.registry import get_family
from megatron_vlm.utils.hashing import sha256_file
from megatron_vlm.utils.processes import children_ignore_sigint
from preprocess.dataset.config import BuildConfig
from preprocess.dataset.errors import BuildError
from preprocess.dataset.lengths import length_report, load_length_target
from preprocess.dataset.mixture import check_repeats, parse_mixture, select_samples
from preprocess.dataset.packing import fill_ratio, fill_upper_bound, pack
from preprocess.dataset.render_sample import IMAGE_PAD, CompactSample, SampleRenderer, chat_messages
from preprocess.dataset.short_data import SKIP_REASONS, ShortData, ShortSample, encode_images, read_short_data
from preprocess.dataset.writer import DatasetWriter

SHORT = kinds_of("instruction")[0]  # the task kind of --short-data samples
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


@dataclass
class BuildResult:
    prefix: Path
    files: list[Path]
    report: dict


def open_pool(pool_dir: str):
    from megatron_vlm.formats.pool import Pool, PoolFormatError

    if not Path(pool_dir).is_dir():
        raise BuildError(f"--pool {pool_dir}: not a directory")
    try:
        return Pool.open(pool_dir)
    except PoolFormatError as err:
        raise BuildError(f"--pool {pool_dir}: {err}") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise BuildError(f"--tokenizer {path}: not a tokenizer directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # damaged files raise whatever transformers and tokenizers meet first
        raise BuildError(f"--tokenizer {path}: cannot load a tokenizer ({type(err).__name__}: {err})") from None
    if not tokenizer.chat_template:
        raise BuildError(f"--tokenizer {path}: has no chat template (use the model's own tokenizer)")
    try:
        probe = tokenizer.apply_chat_template(chat_messages("?", "!", 1, False), tokenize=False)
    except Exception as err:  # a template raises whatever its Jinja code raises on image content
        probe = f"{type(err).__name__}: {err}"
    if not isinstance(probe, str) or IMAGE_PAD not in probe:
        raise BuildError(f"--tokenizer {path}: its chat template cannot render images (a text-only "
                         "model's template?); use the vision-language model's own tokenizer")
    return tokenizer


# --- tokenization workers -------------------------------------------------------------------------

_RENDERER: SampleRenderer | None = None


def _init_worker(tokenizer_dir: str, page_markers: bool) -> None:
    global _RENDERER
    _RENDERER = SampleRenderer(load_tokenizer(tokenizer_dir), page_markers)


def _render(job: tuple[str, str, int]) -> tuple[np.ndarray, np.ndarray]:
    return _RENDERER.render_text(*job)


def tokenize_all(jobs: list[tuple[str, str, int]], tokenizer_dir: str, page_markers: bool, workers: int,
                 progress: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    bar = dict(total=len(jobs), desc="tokenize", unit="sample", disable=not progress)
    if workers == 1:
        _init_worker(tokenizer_dir, page_markers)
        return [_render(j) for j in tqdm(jobs, **bar)]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = multiprocessing.get_context("fork")
    with children_ignore_sigint():  # on Ctrl-C the parent stops them (no traceback from each worker)
        procs = ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_dir, page_markers))
    with procs:
        return list(tqdm(procs.imap(_render, jobs, chunksize=64), **bar))


# --- input hashes ---------------------------------------------------------------------------------

def input_hashes(config: BuildConfig) -> dict:
    tok = Path(config.tokenizer)
    return {
        "tasks": [{"path": str(Path(p).absolute()), "sha256": sha256_file(p)} for p in config.tasks],
        "pool": {"path": str(Path(config.pool).absolute()), "fingerprint": pool_fingerprint(config.pool)},
        "tokenizer": {"path": str(tok.absolute()),
                      "sha256": {n: sha256_file(tok / n) for n in TOKENIZER_FILES if (tok / n).exists()}},
        "short_data": [{"path": str(Path(p).absolute()), "sha256": sha256_file(p)} for p in config.short_data or []],
    }


# --- the stage ------------------------------------------------------------------------------------

def _load_records(config: BuildConfig, docs: dict[str, tuple[int, dict]], renderer: SampleRenderer):
    records: list[TaskRecord] = []
    skipped: Counter = Counter()
    for rec in read_tasks(config.tasks, BuildError):
        if rec.doc_id not in docs:
            raise BuildError(f"{config.tasks[rec.file_index]}:{rec.line_number}: doc_id {rec.doc_id} "
                             f"is not in the pool {config.pool}")
        if renderer.has_special_text(rec.question) or renderer.has_special_text(rec.answer):
            skipped["special_token_text"] += 1
            continue
        records.append(rec)
    return records, skipped


def page_grids(doc: dict, pool, geometry: ImageGeometry, pool_dir: str) -> np.ndarray:
    """``[pages, 2]`` patch grids of a document's pages at ``geometry``: the pool's own where it was rendered
    for the same patches, else the size each stored page is resized to at load time
    (``ImageGeometry.fit_size`` within the pool's pixel bounds)."""
    pool_geometry = get_family(pool.family).geometry
    grids = np.asarray([p["grid"] for p in doc["pages"]], dtype=np.int64).reshape(-1, 2)
    tokens = np.asarray([p["tokens"] for p in doc["pages"]], dtype=np.int64)
    if not np.array_equal(tokens * pool_geometry.merge_size ** 2, grids[:, 0] * grids[:, 1]):
        raise BuildError(f"{pool_dir}/manifest.jsonl: document {doc['doc_id']} has page token counts that "
                         f"are not grid_h*grid_w/{pool_geometry.merge_size ** 2}")
    if geometry.same_patches(pool_geometry):
        return grids
    fitted = [geometry.fit_size(int(h) * pool_geometry.patch_size, int(w) * pool_geometry.patch_size, *pool.pixel_bounds)
              for h, w in grids]
    return np.asarray([geometry.grid_thw(h, w)[1:] for h, w in fitted], dtype=np.int64).reshape(-1, 2)


def _write(config: BuildConfig, pool, docs: dict, grids: dict[str, np.ndarray], records: list[TaskRecord],
           short: list[ShortSample], samples: list[CompactSample], task_codes: np.ndarray, chosen: np.ndarray,
           packs: list[list[int]], geometry: ImageGeometry, meta: dict) -> list[Path]:
    """Expand and write every pack (docs/formats.md "Built dataset"), then commit the files. Samples
    ``0..len(records)-1`` are the tasks' records, the rest the short-data samples."""
    with DatasetWriter(config.output, config.copy_pages or bool(short)) as writer:
        wanted = {short[i - len(records)].key: short[i - len(records)].sizes
                  for i in set(chosen.tolist()) if i >= len(records)}
        short_images = encode_images(config.short_data or [], config.short_image_dir, wanted, writer.add_page)
        copied: dict[int, int] = {}  # pool page index -> index in DATA_PREFIX_pages
        for members in tqdm(packs, desc="write", unit="pack", disable=not config.progress):
            parts: dict[str, list[np.ndarray]] = {"tokens": [], "targets": [], "images": [], "samples": []}
            for pos in members:
                i = int(chosen[pos])
                sample = samples[i]
                ids, tg = sample.expand()
                images = []
                if i >= len(records):
                    rec = short[i - len(records)]
                    origin = (len(config.tasks) + rec.key[0], rec.key[1])
                    for n, (index, (h, w)) in enumerate(zip(short_images[rec.key], rec.sizes), start=1):
                        images.append((fmt.SHORT_IMAGE, n, index, *geometry.grid_thw(h, w)[1:]))
                else:
                    rec = records[i]
                    origin = (rec.file_index, rec.line_number)
                    ordinal, doc = docs[rec.doc_id]
                    for n, grid in enumerate(grids[rec.doc_id], start=1):
                        index = doc["page_start"] + n - 1
                        if config.copy_pages:
                            if index not in copied:
                                copied[index] = writer.add_page(pool.page_bytes(rec.doc_id, n))
                            index = copied[index]
                        images.append((ordinal, n, index, grid[0], grid[1]))
                parts["tokens"].append(ids)
                parts["targets"].append(tg)
                parts["images"].append(np.asarray(images, dtype=np.int32).reshape(-1))
                parts["samples"].append(np.asarray(
                    [task_codes[i], *origin, sample.image_tokens.sum(), sample.target_tokens], dtype=np.int64))
            writer.add_pack(parts["tokens"], parts["targets"], parts["images"], parts["samples"])
        return writer.commit(meta)


def _check_lengths(config: BuildConfig, lengths: np.ndarray, task_codes: np.ndarray, too_long: np.ndarray,
                   weights: dict[str, float]) -> None:
    """Every sample longer than --seq-length (or every sample of a task the mixture asks for): say so."""
    if too_long.all():
        raise BuildError(f"every sample is longer than --seq-length {config.seq_length:,} (the shortest has "
                         f"{lengths.min():,} tokens); raise --seq-length, or build the pool at a lower --dpi")
    for name in weights:
        task = task_codes == TASK_NAMES.index(name)
        if task.any() and too_long[task].all():
            raise BuildError(f"--mixture asks for {name}, but all its {int(task.sum())} samples are longer than "
                             f"--seq-length {config.seq_length:,} (the shortest has {lengths[task].min():,} "
                             f"tokens); raise --seq-length or leave {name} out of --mixture")


def disk_bytes(config: BuildConfig, records: list[TaskRecord], page_tokens: list[np.ndarray],
               chosen: np.ndarray, tokens: int, packs: int, docs: dict) -> int:
    """Bytes the dataset will take: the four IndexedDatasets (``.bin`` and ``.idx``), plus the copied
    pages with --copy-pages (``docs``: doc_id -> (ordinal, manifest entry)); short-data images (their
    encoded size is known only once they are encoded) are not counted."""
    samples = len(chosen)
    images = int(sum(len(page_tokens[i]) for i in chosen))
    data = tokens * (4 + 1) + images * len(fmt.IMAGE_FIELDS) * 4 + samples * len(fmt.SAMPLE_FIELDS) * 8
    index = len(fmt.DATASETS) * (34 + 12 * samples + 8 * (packs + 1))
    if config.copy_pages:
        used = {records[i].doc_id for i in chosen if i < len(records)}
        pages = [p["bytes"] for d in used for p in docs[d][1]["pages"]]
        index += 34 + 20 * len(pages) + 8
        data += sum(pages)
    return data + index


def plan_line(config: BuildConfig, records, page_tokens, selection, chosen_lengths, packs, docs) -> str:
    """What the build is about to write, printed before writing anything."""
    unique = len(set(selection.indices.tolist()))
    factor = max(t["mean_repeats"] for t in selection.report["tasks"].values())
    size = disk_bytes(config, records, page_tokens, selection.indices, int(chosen_lengths.sum()), len(packs), docs)
    return (f"plan: {len(packs):,} packs of up to {config.seq_length:,} tokens, {int(chosen_lengths.sum()):,} "
            f"tokens from {unique:,} unique samples (largest repeat factor x{factor:.2f}), "
            f"{size / 1e9:.3f} GB on disk -> {config.output}")


def _short_report(config: BuildConfig, short: ShortData, mixture: dict) -> dict | None:
    """Records read, used and skipped (by reason) of --short-data, and its target and achieved token share."""
    if not config.short_data:
        return None
    task = mixture["tasks"][SHORT]
    return {"files": list(config.short_data), "records": short.records, "usable": len(short.samples),
            "skipped": {r: short.skipped[r] for r in SKIP_REASONS if short.skipped[r]},
            "target_share": config.short_share, "achieved_share": task["achieved_share"],
            "samples": task["samples"], "unique_samples": task["unique_samples"]}


def build(config: BuildConfig, pool=None) -> BuildResult:
    """Run the build; ``pool`` overrides opening ``config.pool`` (an object with the Pool interface)."""
    config.validate()
    weights = parse_mixture(config.mixture)
    if config.short_share:
        weights = {name: w * (1 - config.short_share) for name, w in weights.items() if config.short_share < 1}
        weights[SHORT] = config.short_share
    target = load_length_target(config.length_dist, config.seq_length)
    pool = pool if pool is not None else open_pool(config.pool)
    family = get_family(config.family or pool.family)
    config.family = family.model_type
    docs = {d["doc_id"]: (i, d) for i, d in enumerate(pool.documents)}
    renderer = SampleRenderer(load_tokenizer(config.tokenizer), config.page_markers)
    hashes = input_hashes(config)

    records, skipped = _load_records(config, docs, renderer)
    if not records:
        raise BuildError(f"no usable samples in {', '.join(config.tasks)}")
    grids = {d: page_grids(docs[d][1], pool, family.geometry, config.pool) for d in {r.doc_id for r in records}}
    merge = family.geometry.merge_size ** 2
    page_tokens = [grids[r.doc_id].prod(axis=1) // merge for r in records]
    rendered = tokenize_all([(r.question, r.answer, len(t)) for r, t in zip(records, page_tokens)],
                            config.tokenizer, config.page_markers, config.workers, config.progress)
    samples = [CompactSample(ids, tg, pt) for (ids, tg), pt in zip(rendered, page_tokens)]
    short = (read_short_data(config.short_data, config.short_image_dir, renderer, config.seq_length, family.geometry)
             if config.short_data else ShortData([], 0))
    if config.short_data and not short.samples:
        raise BuildError(f"--short-data: no usable record in {', '.join(config.short_data)} "
                         f"(skipped: {dict(short.skipped)})")
    samples += [CompactSample(s.ids, s.targets, s.image_tokens) for s in short.samples]
    page_tokens += [s.image_tokens for s in short.samples]
    lengths = np.asarray([s.num_tokens for s in samples], dtype=np.int64)
    task_codes = np.asarray([TASK_NAMES.index(r.task) for r in records]
                            + [TASK_NAMES.index(SHORT)] * len(short.samples), dtype=np.int64)

    too_long = lengths > config.seq_length
    _check_lengths(config, lengths, task_codes, too_long, weights)
    dropped = {name: int((too_long & (task_codes == c)).sum()) for c, name in enumerate(TASK_NAMES)
               if (too_long & (task_codes == c)).any()}
    fit_codes = np.where(too_long, -1, task_codes)
    own = frozenset({SHORT})  # short data keeps its own lengths; --length-dist shapes the long tasks
    check_repeats(lengths, fit_codes, list(TASK_NAMES), weights, target, config.token_budget, config.max_repeats,
                  own)
    selection = select_samples(lengths, fit_codes, list(TASK_NAMES), weights, target,
                               int(config.token_budget), config.seed, own)
    if not len(selection.indices):
        raise BuildError(f"--token-budget {config.token_budget:g} is smaller than half of any sample: nothing selected")
    chosen_lengths = lengths[selection.indices]
    long_codes = [TASK_NAMES.index(n) for n in weights if n != SHORT]
    usable = ~too_long & np.isin(task_codes, long_codes)
    chosen_long = chosen_lengths[np.isin(task_codes[selection.indices], long_codes)]
    packs = pack(chosen_lengths, config.seq_length, config.pack_window)
    print(plan_line(config, records, page_tokens, selection, chosen_lengths, packs, docs), file=sys.stderr,
          flush=True)

    report = {
        "records": len(records) + sum(skipped.values()),
        "skipped": dict(skipped),
        "dropped_too_long": {"seq_length": config.seq_length, "per_task": dropped,
                             "examples": [records[i].id for i in np.flatnonzero(too_long)[:10]]},
        "mixture": selection.report,
        "length": length_report(target, lengths[usable], chosen_long, config.seq_length),
        "short_data": _short_report(config, short, selection.report),
        "packing": {"packs": len(packs), "samples": int(len(chosen_lengths)), "seq_length": config.seq_length,
                    "tokens": int(chosen_lengths.sum()), "window": config.pack_window,
                    "fill_ratio": fill_ratio(chosen_lengths, packs, config.seq_length),
                    "fill_upper_bound": fill_upper_bound(chosen_lengths, config.seq_length)},
    }
    meta = {
        "format_version": fmt.FORMAT_VERSION,
        "kind": fmt.KIND,
        "config": dataclasses.asdict(config),
        "inputs": hashes,
        "model": {"family": family.model_type, "geometry": family.geometry.to_json(), "pages_family": pool.family},
        "task_names": list(TASK_NAMES),
        "image_fields": list(fmt.IMAGE_FIELDS),
        "sample_fields": list(fmt.SAMPLE_FIELDS),
        "pages": "copied" if config.copy_pages else "pool",
        "report": report,
    }
    files = _write(config, pool, docs, grids, records, short.samples, samples, task_codes, selection.indices, packs,
                   family.geometry, meta)
    return BuildResult(Path(config.output), files, report)
