"""``longvlm build`` end to end on a pool of the real PDFs: targets met, round trip through the loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longvlm import api
from megatron_vlm.data.dataset import BuiltDataset
from megatron_vlm.data.micro_batch import micro_batch
from preprocess.dataset.lengths import histogram

PDFS = ("float", "booktabs", "camlidl-1.04.doc", "beamerexample-conference-talk", "microtype", "mathtools",
        "etoolbox", "lineno")
VQA = ("extract-single", "extract-multi", "reasoning")
PAPER_MIXTURE = {"extract-single": 0.4, "extract-multi": 0.4, "reasoning": 0.2}  # the default --mixture


def recount(prefix) -> tuple[int, dict[str, float], list[int]]:
    """Tokens, per-task token shares and the tasks-file line of every sample, counted from the written
    files with megatron-core's ``IndexedDataset`` (not from the build's report)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    meta = json.loads(Path(f"{prefix}.json").read_text())
    files = Path(prefix).parent / meta["files_dir"] / Path(prefix).name  # docs/formats.md: the version folder
    tokens = IndexedDataset(f"{files}_tokens", mmap=True)
    samples = IndexedDataset(f"{files}_samples", mmap=True)
    names = meta["task_names"]
    fields = np.stack([samples[i] for i in range(len(samples))])  # task, tasks_file, line, image/target tokens
    lengths = tokens.sequence_lengths.astype(np.int64)
    assert len(lengths) == len(fields)
    per_task = {names[t]: int(lengths[fields[:, 0] == t].sum()) for t in np.unique(fields[:, 0])}
    return int(lengths.sum()), {t: n / lengths.sum() for t, n in per_task.items()}, fields[:, 2].tolist()


def assert_mixture(prefix, budget: float, mixture: dict[str, float]) -> None:
    total, shares, _ = recount(prefix)
    assert abs(total - budget) / budget < 0.01, total
    assert shares.keys() == mixture.keys()
    assert max(abs(shares[t] - w) for t, w in mixture.items()) < 0.01, shares


@pytest.fixture(scope="module")
def real_inputs(tmp_path_factory, pdf_dir):
    """A 72-dpi pool of 8 real PDFs (12-58 pages) and hand-written page-anchored tasks over it."""
    from megatron_vlm.formats.pool import Pool

    tmp = tmp_path_factory.mktemp("real_build")
    api.pool(inputs=[str(pdf_dir / f"{name}.pdf") for name in PDFS], output=str(tmp / "pool"),
             min_pages=0, max_pages=0, dpi=72, progress=False)
    pool = Pool.open(tmp / "pool")
    rows = []
    for doc in pool.documents:
        for k, task in enumerate(VQA):
            for page in (1 + k, doc["num_pages"] - k):
                text = " ".join(b["text"] for b in pool.page_blocks(doc["doc_id"], page)).strip()[:160]
                rows.append({"id": f"{doc['doc_id'][:8]}-{task}-{page}", "task": task, "doc_id": doc["doc_id"],
                             "question": f"What is the first text on page {page}?", "answer": text or "Nothing.",
                             "evidence_pages": [page], "segment": None, "generator": {"name": "test"}})
    tasks = tmp / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp, pool, tasks, rows


@pytest.mark.slow
def test_real_pool_mixture_lengths_and_round_trip(real_inputs, qwen_tokenizer_dir, qwen_tokenizer):
    tmp, pool, tasks, rows = real_inputs
    common = dict(tasks=[str(tasks)], pool=str(tmp / "pool"), tokenizer=str(qwen_tokenizer_dir),
                  seq_length=32768, token_budget=6e6, progress=False, max_repeats=100)
    native = api.build(output=str(tmp / "native"), **common)
    report = native.report
    # the 58-page document (~37K tokens at 72 dpi) does not fit 32K: dropped and reported, per task,
    # and none of its rows is in the files; every other document's are
    assert report["dropped_too_long"]["per_task"] == {t: 2 for t in VQA}
    longest = max(pool.documents, key=lambda d: d["num_pages"])
    assert longest["num_pages"] == 58
    docs = {rows[line - 1]["doc_id"] for line in recount(tmp / "native")[2]}
    assert docs == {d["doc_id"] for d in pool.documents} - {longest["doc_id"]}
    assert_mixture(tmp / "native", 6e6, PAPER_MIXTURE)
    # few distinct document lengths here: the fill is bounded by the long ones, which cannot share
    assert report["packing"]["fill_ratio"] > 0.95 * report["packing"]["fill_upper_bound"]
    lengths = [b for b in report["length"]["bins"] if b["candidates"]]
    assert all(abs(b["achieved"] - b["target"]) < 0.01 for b in lengths)

    # a histogram file target at this scale: half the examples >= 24K tokens
    hist = tmp / "hist.json"
    hist.write_text(json.dumps({"edges": [0, 16384, 24576, 32769], "fractions": [0.2, 0.3, 0.5]}))
    api.build(output=str(tmp / "biased"), length_dist=str(hist), **common)
    assert_mixture(tmp / "biased", 6e6, PAPER_MIXTURE)
    stats = api.stats(prefix=str(tmp / "biased"))
    ds = BuiltDataset(tmp / "biased")
    sample_lengths = np.concatenate([ds.read_pack(i)["sample_lengths"] for i in range(len(ds))])
    shares = histogram(sample_lengths, (0, 16384, 24576, 32769)) / len(sample_lengths)
    np.testing.assert_allclose(shares, [0.2, 0.3, 0.5], atol=0.01)
    assert stats["samples"] == len(sample_lengths)

    # round trip: the first pack decodes to its tasks' questions and answers, and to the pool's pages
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ds = BuiltDataset(tmp / "native")
    raw, item = ds.read_pack(0), ds[0]
    starts = np.concatenate([[0], np.cumsum(raw["sample_lengths"])])
    image_start = 0
    for (task, _, line, _, _), lo, hi in zip(raw["samples"], starts[:-1], starts[1:]):
        row = rows[line - 1]
        assert ds.meta["task_names"][task] == row["task"]
        text = qwen_tokenizer.decode(raw["tokens"][lo:hi])
        assert f"{row['question']}<|im_end|>\n<|im_start|>assistant\n{row['answer']}<|im_end|>\n" in text
        assert qwen_tokenizer.decode(raw["tokens"][lo:hi][raw["targets"][lo:hi] == 1]) == row["answer"] + "<|im_end|>"
        doc = pool.get(row["doc_id"])
        assert text.count("<|vision_start|>") == doc["num_pages"]
        for n in range(1, doc["num_pages"] + 1):
            np.testing.assert_array_equal(item["pages"][image_start + n - 1],
                                          np.asarray(pool.page_image(row["doc_id"], n)))
        image_start += doc["num_pages"]
    # pixel values of a whole pack (the one with the most page formats: the pool stores JPEG only
    # for photographic pages) equal the image processor's

    def formats(k):
        return {pool.documents[o]["pages"][n - 1]["format"] for o, n in ds.read_pack(k)["images"][:, :2]}

    k = max(range(len(ds)), key=lambda k: len(formats(k)))
    batch = micro_batch([ds[k]], ds.geometry)
    pages = [pool.page_image(pool.documents[o]["doc_id"], int(n)) for o, n in ds.read_pack(k)["images"][:, :2]]
    expected = Qwen2VLImageProcessorPil()(images=pages, return_tensors="np")
    np.testing.assert_array_equal(batch["image_grid_thw"].numpy(), expected["image_grid_thw"])
    np.testing.assert_allclose(batch["pixel_values"].numpy(), expected["pixel_values"], rtol=0, atol=2e-6)


@pytest.mark.slow
def test_synth_tasks_build_and_load(real_inputs, qwen_tokenizer_dir, qwen_tokenizer):
    """pool -> synth (offline, all five tasks) -> build -> loader: every task trains on its answer."""
    from megatron_vlm.data.loader import build_data_loader

    tmp, pool, _, _ = real_inputs
    api.synth(pool=str(tmp / "pool"), output=str(tmp / "synth.jsonl"), per_doc=1, progress=False)
    rows = [json.loads(line) for line in (tmp / "synth.jsonl").read_text().splitlines()]
    mixture = "extract-single=0.3,extract-multi=0.3,reasoning=0.2,ocr-full=0.1,ocr-needle=0.1"
    api.build(tasks=[str(tmp / "synth.jsonl")], pool=str(tmp / "pool"), tokenizer=str(qwen_tokenizer_dir),
              output=str(tmp / "synth"), seq_length=65536, token_budget=3e6, mixture=mixture, max_repeats=100,
              progress=False)
    assert_mixture(tmp / "synth", 3e6, {"extract-single": 0.3, "extract-multi": 0.3, "reasoning": 0.2,
                                        "ocr-full": 0.1, "ocr-needle": 0.1})
    # as the tokenizer gives them back: its NFC normalization maps e.g. U+2329 to U+3008 (mathtools' OCR text)
    answers = {qwen_tokenizer.decode(qwen_tokenizer.encode(r["answer"] + "<|im_end|>")) for r in rows}
    loader = build_data_loader(tmp / "synth", 2, num_workers=2, total_samples=4, seed=1)
    seen = 0
    for batch in loader:
        labels, mask = batch["labels"].reshape(-1), batch["loss_mask"].reshape(-1)
        cu = batch["cu_seqlens_padded"].tolist()
        for lo, hi in zip(cu[:-1], cu[1:]):
            if mask[lo:hi].any():
                assert qwen_tokenizer.decode(labels[lo:hi][mask[lo:hi] == 1]) in answers
                seen += 1
        assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(1).sum())
    assert seen >= 4
