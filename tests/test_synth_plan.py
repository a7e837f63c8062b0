"""``preprocess.synth.plan``: which instances a synth run attempts, in which order and shard, with which seed
and segment; what it refuses. Documents are small hand-made manifest entries."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from preprocess.synth.config import SynthConfig, SynthError
from preprocess.synth.plan import job_seed, open_pool, own_keys, plan, plan_keys, plan_size, shard_of

REPO = Path(__file__).resolve().parents[1]
ES, EM, RE, OCR, NEEDLE = "extract-single", "extract-multi", "reasoning", "ocr-full", "ocr-needle"


def doc(i: int, num_pages: int = 30, sections: list[dict] | None = None) -> dict:
    return {"doc_id": f"{i:064x}", "num_pages": num_pages, "sections": sections or []}


def section(title: str, first: int, last: int, level: int = 1) -> dict:
    return {"title": title, "level": level, "first_page": first, "last_page": last}


def config(**options) -> SynthConfig:
    return SynthConfig(pool="pool", output="tasks.jsonl", progress=False, **options)


DOCS = [doc(i) for i in range(3)]


def test_per_doc_order_is_document_then_task_then_sample_and_ocr_full_once():
    keys = list(plan_keys(DOCS[:2], config(tasks=f"{ES},{OCR},{RE}", per_doc=2)))
    assert keys == [(0, ES, 0), (0, ES, 1), (0, OCR, 0), (0, RE, 0), (0, RE, 1),
                    (1, ES, 0), (1, ES, 1), (1, OCR, 0), (1, RE, 0), (1, RE, 1)]
    # tasks in the order given, each once
    assert [t for _, t, _ in plan_keys(DOCS[:1], config(tasks=f"{RE},{ES},{RE}"))] == [RE, ES]


def test_per_task_deals_each_task_round_robin_over_a_seeded_document_order():
    keys = list(plan_keys(DOCS, config(tasks=f"{ES},{OCR}", per_task=7)))
    es = [(d, k) for d, t, k in keys if t == ES]
    assert len(es) == 7
    order = [d for d, _ in es[:3]]
    assert sorted(order) == [0, 1, 2]  # every document once before any twice
    assert es == [(order[i % 3], i // 3) for i in range(7)]
    assert sorted(Counter(d for d, _ in es).values()) == [2, 2, 3]
    # ocr-full: one possible instance per document, so at most one per document
    assert sorted((d, k) for d, t, k in keys if t == OCR) == [(0, 0), (1, 0), (2, 0)]
    # the order is seeded: over many documents, another seed deals them in another order
    many = [doc(i) for i in range(20)]
    first = [d for d, _, _ in plan_keys(many, config(tasks=ES, per_task=20, seed=0))]
    assert first == [d for d, _, _ in plan_keys(many, config(tasks=ES, per_task=20, seed=0))]
    assert first != [d for d, _, _ in plan_keys(many, config(tasks=ES, per_task=20, seed=1))]
    assert sorted(first) == list(range(20))


@pytest.mark.parametrize("options,size", [
    ({"per_doc": 2}, 3 * (4 * 2 + 1)),                      # 3 docs x (4 kinds x 2 + ocr-full once)
    ({"per_task": 7}, 4 * 7 + 3),                           # ocr-full: one per document
    ({"per_task": 2}, 5 * 2),                               # fewer than the documents: ocr-full too
    ({"per_doc": 3, "tasks": OCR}, 3),
    ({"per_task": 1, "tasks": f"{RE},{NEEDLE}"}, 2),
])
def test_plan_size_counts_the_plan_without_sampling(options, size):
    assert plan_size(len(DOCS), config(**options)) == size
    assert len(list(plan(DOCS, config(**options)))) == size


def test_shards_partition_the_plan_by_document_in_plan_order():
    docs = [doc(i) for i in range(5)]
    for options in ({"per_doc": 2}, {"per_task": 9}):
        whole = list(plan_keys(docs, config(**options)))
        shards = [list(own_keys(docs, config(shard=s, num_shards=3, **options))) for s in range(3)]
        for s, keys in enumerate(shards):
            assert {d for d, _, _ in keys} == {d for d in range(5) if d % 3 == s}
            assert keys == [k for k in whole if k[0] % 3 == s]  # the unsharded order
        assert sorted(k for keys in shards for k in keys) == sorted(whole)
    assert [shard_of(i, 4) for i in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]


def test_job_seeds_depend_on_every_part_and_not_on_the_process():
    base = job_seed(0, "a" * 64, ES, 0)
    assert base == job_seed(0, "a" * 64, ES, 0)
    others = {job_seed(1, "a" * 64, ES, 0), job_seed(0, "b" * 64, ES, 0), job_seed(0, "a" * 64, RE, 0),
              job_seed(0, "a" * 64, ES, 1)}
    assert base not in others and len(others) == 4
    assert all(0 <= s < 2 ** 60 for s in others | {base})
    # a rerun in another interpreter (another str hash salt) derives the same seed
    code = f"from preprocess.synth.plan import job_seed; print(job_seed(0, {'a' * 64!r}, {ES!r}, 0))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345"}, cwd=REPO)
    assert int(out.stdout) == base


def test_jobs_carry_their_seed_and_only_vqa_kinds_a_segment():
    jobs = list(plan(DOCS[:1], config(tasks=f"{ES},{OCR},{NEEDLE}", per_doc=2, seed=7)))
    assert [(j.task, j.sample) for j in jobs] == [(ES, 0), (ES, 1), (OCR, 0), (NEEDLE, 0), (NEEDLE, 1)]
    for j in jobs:
        assert j.doc is DOCS[0]
        assert j.seed == job_seed(7, DOCS[0]["doc_id"], j.task, j.sample)
        assert (j.segment is not None) == (j.task == ES)


def test_segments_are_the_sections_that_fit_the_span():
    # units: A (1-10), B (11-30: 20 pages, too long and no subsections): the only 8-15 page run is A
    sectioned = doc(0, 30, [section("A", 1, 10), section("B", 11, 30)])
    jobs = list(plan([sectioned], config(tasks=f"{ES},{EM},{RE}", per_doc=5)))
    assert {(j.segment.first_page, j.segment.last_page, tuple(j.segment.sections), j.segment.source)
            for j in jobs} == {(1, 10, ("A",), "sections")}
    # B's subsections replace it: units A (1-10), B1 (11-14), B2 (15-24), B3 (25-30); the runs of 8-15 pages are
    # A, A + B1, B1 + B2 and B2 (B2 + B3 spans 16)
    nested = doc(1, 30, [section("A", 1, 10), section("B", 11, 30), section("B1", 11, 14, 2),
                         section("B2", 15, 24, 2), section("B3", 25, 30, 2)])
    spans = {(j.segment.first_page, j.segment.last_page) for j in plan([nested], config(tasks=ES, per_doc=60))}
    assert spans == {(1, 10), (1, 14), (11, 24), (15, 24)}
    # --segment-pages sets the span: 1-4 pages picks the single units of at most 4 pages (A1 2 pages, B1 4)
    small = doc(2, 30, [section("A", 1, 10), section("A1", 1, 2, 2), section("A2", 3, 10, 2), section("B", 11, 30),
                        section("B1", 11, 14, 2), section("B2", 15, 30, 2)])
    spans = {(j.segment.first_page, j.segment.last_page)
             for j in plan([small], config(tasks=ES, per_doc=40, segment_pages="1-4"))}
    assert spans == {(1, 2), (11, 14)}


def test_documents_without_usable_sections_get_a_window_or_the_whole_document():
    windows = [j.segment for j in plan([doc(0, 40)], config(tasks=ES, per_doc=30, segment_pages="5-6"))]
    assert {s.source for s in windows} == {"window"}
    assert all(5 <= s.last_page - s.first_page + 1 <= 6 and 1 <= s.first_page and s.last_page <= 40 for s in windows)
    assert len({(s.first_page, s.last_page) for s in windows}) > 1  # each instance samples its own window
    (short,) = [j.segment for j in plan([doc(0, 5)], config(tasks=ES))]
    assert (short.first_page, short.last_page, short.source) == (1, 5, "document")


def test_the_plan_is_a_function_of_the_seed():
    docs = [doc(i, 60) for i in range(4)]

    def segments(seed: int) -> list[tuple[int, int]]:
        return [(j.segment.first_page, j.segment.last_page)
                for j in plan(docs, config(tasks=f"{ES},{RE}", per_doc=3, seed=seed))]

    assert segments(3) == segments(3)
    assert segments(3) != segments(4)


@pytest.mark.parametrize("options,message", [
    ({"segment_pages": "15-8"}, "--segment-pages: expected 'MIN-MAX' with 1 <= MIN <= MAX, got '15-8'"),
    ({"segment_pages": "0-3"}, "--segment-pages"),
    ({"segment_pages": "a-b"}, "--segment-pages"),
    ({"tasks": f"{ES},summarize"}, "--tasks: unknown task(s) ['summarize']"),
    ({"tasks": " , "}, "--tasks: unknown task(s)"),
])
def test_bad_options_are_refused_before_any_job(options, message):
    with pytest.raises(SynthError) as err:
        next(plan(DOCS, config(**options)))
    assert message in str(err.value)


def test_a_missing_pool_is_a_synth_error_naming_it(tmp_path):
    with pytest.raises(SynthError, match=rf"{tmp_path / 'none'} is not a complete document pool \(no pool.json\)"):
        open_pool(str(tmp_path / "none"))
