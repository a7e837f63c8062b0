"""docqa inputs (our JSONL, synth's TASKS.jsonl, MMLongBench-Doc's samples.json), PDF rendering like the
pool, truncation, and prompts identical to what ``longvlm build`` and the loader feed training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluation import docqa
from evaluation.config import SHORT_ANSWER_INSTRUCTION, DocQAConfig, EvalError
from evaluation.prompt import PromptBuilder
from longvlm import api
from megatron_vlm.data.collate import collate_packs
from megatron_vlm.data.dataset import BuiltDataset
from megatron_vlm.formats.pool import Pool


@pytest.fixture(scope="module")
def pool(small_pool):
    return Pool.open(small_pool)


@pytest.fixture(scope="module")
def builder(qwen_tokenizer):
    return PromptBuilder(qwen_tokenizer)


def _config(tmp_path, qwen_tokenizer_dir, input, **kw):
    return DocQAConfig(input=str(input), output=str(tmp_path / "out"), backend="openai", model="m",
                       tokenizer=str(qwen_tokenizer_dir), **kw)


def test_three_input_formats(tmp_path, pool, small_pool, builder, qwen_tokenizer_dir, pdf_dir):
    float_id, booktabs_id = (d["doc_id"] for d in pool.documents)
    ours = tmp_path / "questions.jsonl"
    ours.write_text(json.dumps({"doc": "float.pdf", "question": "How many pages?", "answer": 12,
                                "answer_format": "Int", "evidence_pages": [1]}) + "\n"
                    + json.dumps({"doc": booktabs_id, "question": "Which package?", "answer": "booktabs"}) + "\n")
    requests = docqa.requests(_config(tmp_path, qwen_tokenizer_dir, ours, pool=str(small_pool), pdf_dir=str(pdf_dir),
                                      dpi=36), builder)
    a, b = requests
    assert a.meta["answer_format"] == "Int" and a.answer == "12" and a.meta["evidence_pages"] == [1]
    assert b.meta["answer_format"] == "Str" and len(b.pages) == 18 and b.pages[0].describe()["doc_id"] == booktabs_id
    assert a.question == "How many pages?"  # no instruction for our own format by default
    # a PDF is rendered exactly as the pool renders it (same dpi): the same pixels as the pool's pages
    assert len(a.pages) == 12
    for n in (1, 7):
        np.testing.assert_array_equal(a.pages[n - 1].pixels(), np.asarray(pool.page_image(float_id, n)))

    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps([{"doc_id": "booktabs.pdf", "doc_type": "Guidebook", "question": "Which rules?",
                                    "answer": "['toprule', 'midrule']", "answer_format": "List",
                                    "evidence_pages": "[3, 5]", "evidence_sources": "['Pure-text (Plain-text)', 'Table']"},
                                   {"doc_id": "float.pdf", "doc_type": "Guidebook", "question": "Who wrote it?",
                                    "answer": "Not answerable", "answer_format": "None", "evidence_pages": "[]",
                                    "evidence_sources": "[]"}]))
    c, d = docqa.requests(_config(tmp_path, qwen_tokenizer_dir, samples, pdf_dir=str(pdf_dir), dpi=36), builder)
    assert c.meta["evidence_pages"] == [3, 5] and c.meta["evidence_sources"] == ["Pure-text (Plain-text)", "Table"]
    assert c.meta["doc_type"] == "Guidebook" and d.meta["evidence_pages"] == []
    assert c.question == f"Which rules?\n{SHORT_ANSWER_INSTRUCTION}"  # MMLongBench-Doc: short answers
    assert len(c.pages) == 18 and c.pages[0].describe() == {"pdf": str(pdf_dir / "booktabs.pdf"), "page": 1}

    tasks = tmp_path / "tasks.jsonl"
    api.synth(pool=str(small_pool), output=str(tasks), tasks="extract-single", progress=False)
    lines = [json.loads(x) for x in tasks.read_text().splitlines()]
    requests = docqa.requests(_config(tmp_path, qwen_tokenizer_dir, tasks, pool=str(small_pool)), builder)
    assert [r.id for r in requests] == [x["id"] for x in lines]
    assert [r.meta["task"] for r in requests] == ["extract-single"] * len(lines)
    assert all(r.meta["answer_format"] == "Str" and r.question == x["question"] for r, x in zip(requests, lines))


def test_truncation_keeps_page_numbers_and_reports_dropped_evidence(tmp_path, pool, small_pool, builder,
                                                                    qwen_tokenizer_dir):
    doc = pool.documents[1]["doc_id"]  # 18 pages of 165 tokens
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"doc": doc, "question": "What is on page 17?", "answer": "x",
                                     "evidence_pages": [2, 17]}) + "\n")
    limit = 1000
    for side, numbers in (("end", [1, 2, 3, 4, 5]), ("middle", [1, 2, 3, 17, 18])):
        (r,) = docqa.requests(_config(tmp_path, qwen_tokenizer_dir, questions, pool=str(small_pool),
                                      max_context=str(limit), truncate=side), builder)
        assert r.context.page_numbers == numbers, side
        assert r.num_tokens <= limit
        text = builder.tokenizer.decode(r.ids)
        assert all(f"Page {n}:<|vision_start|>" in text for n in numbers) and "Page 6:" not in text
        assert r.meta["pages_dropped"] == 13
        assert r.meta["evidence_dropped"] == ([17] if side == "end" else [2] if 2 not in numbers else [])
        # maximal: one more kept page would not fit
        more = docqa.keep_pages(18, 6, side)
        bigger = docqa.Context([docqa.PoolPage.of(pool, pool.documents[1], i + 1, builder.geometry) for i in more], [i + 1 for i in more])
        assert builder.count(r.question, bigger) > limit


def test_bad_inputs_name_file_and_line(tmp_path, builder, qwen_tokenizer_dir):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"doc": "missing.pdf", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(EvalError, match=r"q.jsonl:1: document 'missing.pdf' is neither a doc id of the pool nor a PDF"):
        docqa.requests(_config(tmp_path, qwen_tokenizer_dir, questions), builder)
    questions.write_text(json.dumps({"doc": "x.pdf", "question": "q"}) + "\n")
    with pytest.raises(EvalError, match=r"q.jsonl:1: missing key 'answer'"):
        docqa.requests(_config(tmp_path, qwen_tokenizer_dir, questions), builder)
    questions.write_text(json.dumps({"doc": "x.pdf", "question": "q", "answer": "a", "answer_format": "Integer"}) + "\n")
    with pytest.raises(EvalError, match=r"q.jsonl:1: answer_format 'Integer' is not one of"):
        docqa.requests(_config(tmp_path, qwen_tokenizer_dir, questions), builder)


def test_prompt_is_the_training_sample(tmp_path, pool, small_pool, builder, qwen_tokenizer, qwen_tokenizer_dir):
    """docqa on synth's tasks gives, prompt + answer, the very micro-batch that 'longvlm build' and the loader
    make of the same tasks: same ids, loss mask, positions, patches."""
    tasks = tmp_path / "tasks.jsonl"
    api.synth(pool=str(small_pool), output=str(tasks), tasks="extract-single", progress=False)
    requests = docqa.requests(_config(tmp_path, qwen_tokenizer_dir, tasks, pool=str(small_pool)), builder)
    items = [r.pack_item() for r in requests]
    lengths = [len(it["input_ids"]) for it in items]
    api.build(tasks=[str(tasks)], pool=str(small_pool), tokenizer=str(qwen_tokenizer_dir),
              output=str(tmp_path / "data"), seq_length=max(lengths), token_budget=sum(lengths),
              mixture="extract-single=1", progress=False)
    dataset = BuiltDataset(tmp_path / "data")
    by_length = {len(dataset[i]["input_ids"]): dataset[i] for i in range(len(dataset))}
    assert sorted(by_length) == sorted(lengths)  # one sample per pack, each task once
    for request, item in zip(requests, items):
        built = by_length[len(item["input_ids"])]
        ours, theirs = collate_packs([item]), collate_packs([built])
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key
        # the prompt a model generates from is the sample up to the answer
        n = len(request.expanded_ids())
        assert torch.equal(ours["input_ids"][0, :n], torch.from_numpy(request.expanded_ids()).long())
        answer = qwen_tokenizer.decode(ours["labels"][0][ours["loss_mask"][0] > 0])
        assert answer == request.answer + "<|im_end|>"
        assert ours["loss_mask"][0, : n - 1].sum() == 0


def test_a_damaged_questions_file_is_refused_before_the_tokenizer_loads(tmp_path, small_pool, qwen_tokenizer_dir,
                                                                        monkeypatch):
    import evaluation.run

    def no_tokenizer(options):
        raise AssertionError("the tokenizer was loaded before the inputs were checked")

    monkeypatch.setattr(evaluation.run, "load_tokenizer", no_tokenizer)
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"doc": "float.pdf", "question": "How many pages?"\n')  # cut short
    with pytest.raises(EvalError, match=str(questions)):
        evaluation.run.run_task("docqa", _config(tmp_path, qwen_tokenizer_dir, questions, pool=small_pool))
    assert not (tmp_path / "out").exists()
