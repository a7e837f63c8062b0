"""longvlm synth on an in-memory pool: segment sampling, validation, offline QA, OCR, reruns, CLI."""

from __future__ import annotations

import json
import random
import re

import pytest
from helpers.synth_inputs import SECTIONS, FakePool, answer_items

from longvlm.cli import main as cli_main
from preprocess.synth import SynthConfig, SynthError, run_synth
from preprocess.synth.run import plan, plan_size
from preprocess.synth.segments import Segment, sample_segment, segment_candidates
from preprocess.synth.validate import DuplicateFilter, Rejected, anchor_pages, check_qa


def _doc(num_pages=30, sections=SECTIONS):
    return FakePool(1, num_pages, sections).documents[0]


def _raw_text(pool, doc_id, page):
    """The page's text as the fake pool holds it (every block, headers included)."""
    return " ".join(re.sub(r"\s+", " ", b["text"]) for b in pool.page_blocks(doc_id, page))


def _synth(tmp_path, pool, **options):
    config = SynthConfig(pool="fake", output=str(tmp_path / "tasks.jsonl"), progress=False, **options)
    result = run_synth(config, pool=pool)
    return result, [json.loads(line) for line in result.output.read_text().splitlines()]


# -- segments -----------------------------------------------------------------------------------
def test_segment_candidates_are_runs_of_consecutive_sections_of_8_to_15_pages():
    # By hand: "Methods" (5-20, 16 pages) is too long and is replaced by its two subsections; the
    # units are Intro 1-4, Data 5-11, Model 12-20, Results 21-26, Discussion 27-30.
    got = {(s.first_page, s.last_page, tuple(s.sections)) for s in segment_candidates(_doc(), 8, 15)}
    assert got == {(1, 11, ("Introduction", "Data Collection")), (12, 20, ("Model Design",)),
                   (12, 26, ("Model Design", "Results")), (21, 30, ("Results", "Discussion"))}


def test_sampled_segments_start_and_end_on_section_boundaries():
    doc = _doc()
    starts = {s["first_page"] for s in SECTIONS}
    ends = {s["last_page"] for s in SECTIONS}
    seen = set()
    for seed in range(100):
        seg = sample_segment(doc, random.Random(seed), 8, 15)
        assert seg.source == "sections" and 8 <= seg.last_page - seg.first_page + 1 <= 15
        assert seg.first_page in starts and seg.last_page in ends
        seen.add((seg.first_page, seg.last_page))
    assert len(seen) == 4  # every candidate gets sampled


def test_segments_fall_back_to_page_windows_and_whole_short_documents():
    for seed in range(50):
        seg = sample_segment(_doc(30, sections=None), random.Random(seed), 8, 15)
        assert seg.source == "window" and 8 <= len(seg.pages) <= 15 and 1 <= seg.first_page <= seg.last_page <= 30
    assert sample_segment(_doc(5, sections=None), random.Random(0), 8, 15) == Segment(1, 5, [], "document")
    # a document whose only section is longer than the span and has no subsections
    one = _doc(30, sections=[{"title": "Everything", "level": 1, "first_page": 1, "last_page": 30}])
    assert sample_segment(one, random.Random(0), 8, 15).source == "window"


# -- validation ---------------------------------------------------------------------------------
SEG = Segment(20, 25, ["Results"], "sections")
GOOD = {"question": "On page 21, what yield is reported for the North region?", "answer": "220 tonnes",
        "evidence": "table on page 21", "evidence_pages": [21]}


@pytest.mark.parametrize("task, change, reason", [
    ("extract-single", "not a dict", "malformed"),
    ("extract-single", {"question": 7}, "malformed"),
    ("extract-single", {"evidence_pages": "21"}, "malformed"),
    ("extract-single", {"answer": "  "}, "empty_answer"),
    ("extract-single", {"evidence_pages": [19]}, "evidence_outside_segment"),
    ("extract-single", {"question": "What yield is reported for the North region?"}, "no_anchor"),
    ("extract-single", {"question": "On pages 30-31, what yield is reported?"}, "anchor_outside_segment"),
    ("extract-single", {"evidence_pages": [21, 22]}, "wrong_evidence_count"),
    ("extract-multi", {}, "wrong_evidence_count"),
])
def test_check_qa_rejects_with_reason(task, change, reason):
    output = change if isinstance(change, str) else {**GOOD, **change}
    with pytest.raises(Rejected) as info:
        check_qa(task, output, SEG)
    assert info.value.reason == reason


def test_check_qa_accepts_page_and_section_anchors_and_dedups():
    assert check_qa("extract-single", GOOD, SEG)["evidence_pages"] == [21]
    by_section = {**GOOD, "question": "In the Results section, what yield is reported for the North region?"}
    assert check_qa("extract-single", by_section, SEG)["answer"] == "220 tonnes"
    multi = {**GOOD, "question": "Based on pages 21 and 24, list the yields.", "evidence_pages": [24, 21, 24]}
    assert check_qa("extract-multi", multi, SEG)["evidence_pages"] == [21, 24]
    dedup = DuplicateFilter()
    dedup.check("doc", "On page 21, what is X?")
    dedup.check("other-doc", "On page 21, what is X?")
    with pytest.raises(Rejected, match="duplicate_question"):
        dedup.check("doc", "on  page 21 — what is x")


def test_anchor_pages():
    assert anchor_pages("Based on pages 3, 5 and 9, list ...") == [3, 5, 9]
    assert anchor_pages("on pages 20-25 and on p. 30") == [20, 21, 22, 23, 24, 25, 30]
    assert anchor_pages("In the Introduction, who wrote it?") == []
    assert anchor_pages("On page 12, 2020 and 2021 revenues?") == [12]


# -- offline generator --------------------------------------------------------------------------
def test_offline_answers_are_read_from_the_cited_evidence_pages(tmp_path):
    pool = FakePool(3)
    result, records = _synth(tmp_path, pool, tasks="extract-single,extract-multi,reasoning", per_doc=6)
    assert result.accepted >= 40 and {r["task"] for r in records} == {"extract-single", "extract-multi", "reasoning"}
    kinds = set()
    for r in records:
        seg = r["segment"]
        assert all(seg["first_page"] <= p <= seg["last_page"] for p in r["evidence_pages"])
        kinds.add((r["task"], " vs " in r["answer"]))
        for page, text in answer_items(r):
            if " vs " not in r["answer"]:
                assert text not in r["question"] and text != str(page), r  # read off the page, not trivia
            assert text in _raw_text(pool, r["doc_id"], page), (r["question"], page, text)
            assert "running header" not in text
        assert r["generator"] == {"name": "offline", "model": None, "prompt_version": "offline-v1"}
    assert ("reasoning", True) in kinds and ("reasoning", False) in kinds  # comparisons and counts


def test_rerun_is_byte_identical_and_the_seed_matters(tmp_path):
    pool = FakePool(2)
    first, _ = _synth(tmp_path / "a", pool, per_doc=3)
    again, _ = _synth(tmp_path / "a", pool, per_doc=3)
    other, _ = _synth(tmp_path / "b", pool, per_doc=3, seed=1)
    assert first.output.read_bytes() == again.output.read_bytes()
    assert first.output.read_bytes() != other.output.read_bytes()
    assert json.loads(first.summary_path.read_text())["summary"] == first.summary


# -- OCR ----------------------------------------------------------------------------------------
def test_ocr_full_transcribes_every_page_in_reading_order_without_headers(tmp_path):
    pool = FakePool(1, num_pages=9)
    _, records = _synth(tmp_path, pool, tasks="ocr-full")
    (r,) = records
    doc_id = pool.documents[0]["doc_id"]
    expected = "\n\n".join(
        f"Page {p}:\n" + "\n".join(b["text"] for b in pool.page_blocks(doc_id, p) if b["label"] != "header_footer")
        for p in range(1, 10))
    assert r["answer"] == expected and r["evidence_pages"] == list(range(1, 10)) and r["segment"] is None
    assert "running header" not in r["answer"]


def test_ocr_needle_names_its_pages_and_transcribes_only_them(tmp_path):
    pool = FakePool(2)
    _, records = _synth(tmp_path, pool, tasks="ocr-needle", per_doc=10)
    sizes = set()
    for r in records:
        pages = r["evidence_pages"]
        sizes.add(len(pages))
        assert anchor_pages(r["question"]) == pages
        assert [int(p) for p in re.findall(r"^Page (\d+):$", r["answer"], re.M)] == pages
        for p in pages:
            assert f"alpha-{int(r['doc_id'], 16)}-{p} " in r["answer"]
    assert sizes == {1, 2, 3}


# -- plan and CLI -------------------------------------------------------------------------------
def test_per_task_spreads_over_documents_and_plans_ocr_full_once_per_document():
    pool = FakePool(3)
    config = SynthConfig(pool="fake", output="x.jsonl", per_task=7)
    jobs = list(plan(pool.documents, config))
    assert len(jobs) == plan_size(3, config) == 4 * 7 + 3
    for task in ("extract-single", "ocr-full"):
        counts = sorted(sum(j.task == task and j.doc is d for j in jobs) for d in pool.documents)
        assert counts == ([2, 2, 3] if task == "extract-single" else [1, 1, 1])
    small = list(plan(pool.documents, SynthConfig(pool="fake", output="x.jsonl", per_task=1, tasks="reasoning")))
    assert len(small) == 1


@pytest.mark.parametrize("mode", [{"per_doc": 2}, {"per_task": 7}], ids=["per-doc", "per-task"])
def test_shards_merged_equal_one_unsharded_run(tmp_path, mode):
    """3 shards of 5 documents, merged (given out of order), write the bytes one run writes, rejections
    included; every document's instances come from its one shard."""
    pool = FakePool(5)
    one, _ = _synth(tmp_path, pool, **mode)
    assert one.rejected  # duplicate questions: a document's instances must stay in one shard
    paths = [str(tmp_path / f"shard{k}.jsonl") for k in range(3)]
    for k, path in enumerate(paths):
        shard = run_synth(SynthConfig(pool="fake", output=path, shard=k, num_shards=3, progress=False, **mode), pool=pool)
        docs = {json.loads(line)["doc_id"] for line in shard.output.read_text().splitlines()}
        assert docs == {d["doc_id"] for d in pool.documents[k::3]}
    merged = run_synth(SynthConfig(pool="fake", output=str(tmp_path / "merged.jsonl"), merge=paths[::-1],
                                   progress=False), pool=pool)
    assert merged.output.read_bytes() == one.output.read_bytes()
    assert merged.rejected_path.read_bytes() == one.rejected_path.read_bytes()
    assert merged.summary == one.summary and merged.table == one.table
    with pytest.raises(SynthError, match=r"missing \[1\]"):
        run_synth(SynthConfig(pool="fake", output=str(tmp_path / "bad.jsonl"), merge=paths[::2]), pool=pool)
    run_synth(SynthConfig(pool="fake", output=paths[1], shard=1, num_shards=3, seed=7, progress=False, **mode), pool=pool)
    with pytest.raises(SynthError, match="other options than .*'seed': 7"):
        run_synth(SynthConfig(pool="fake", output=str(tmp_path / "bad.jsonl"), merge=paths), pool=pool)
    assert not (tmp_path / "bad.jsonl").exists()


def test_cli_reports_a_missing_pool_and_bad_options(tmp_path, capsys):
    assert cli_main(["synth", str(tmp_path / "nope"), "-o", str(tmp_path / "t.jsonl")]) == 2
    assert "not a complete document pool" in capsys.readouterr().err
    assert cli_main(["synth", str(tmp_path), "-o", str(tmp_path / "t.jsonl"), "--tasks", "ocr-full,qa"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert cli_main(["synth", str(tmp_path), "-o", str(tmp_path / "t.jsonl"), "--segment-pages", "15-8"]) == 2
    assert "--segment-pages" in capsys.readouterr().err
    assert cli_main(["synth", str(tmp_path), "-o", str(tmp_path / "t.jsonl"), "--generator", "openai"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert not (tmp_path / "t.jsonl").exists()


# -- task kinds ------------------------------------------------------------------------------------
def test_no_stage_tests_a_task_name_outside_the_registry():
    """Task names are data of ``megatron_vlm.formats.tasks.TASK_KINDS``: the stages look kinds up; only
    the offline generator's table of question makers is keyed by name."""
    import ast
    from pathlib import Path

    from megatron_vlm.formats.tasks import TASK_KINDS

    repo = Path(__file__).resolve().parents[1]
    allowed = {repo / "megatron_vlm/formats/tasks.py", repo / "preprocess/synth/generators/offline.py"}
    found = []
    for package in ("preprocess", "evaluation", "training", "launch", "longvlm", "megatron_vlm"):
        for path in sorted((repo / package).rglob("*.py")):
            if path in allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in TASK_KINDS:
                    found.append(f"{path.relative_to(repo)}:{node.lineno} {node.value!r}")
    assert not found, found


def test_a_new_vqa_kind_is_one_registry_entry_and_its_prompt_file(tmp_path, monkeypatch):
    from megatron_vlm.formats import tasks
    from preprocess.synth import prompts

    kind = tasks.TaskKind("compare-pages", "vqa", "comparison of two pages", (2, 2), "segment", "compare-pages")
    monkeypatch.setitem(tasks.TASK_KINDS, kind.name, kind)
    monkeypatch.setattr(prompts, "PROMPT_DIR", tmp_path)
    (tmp_path / "common.v1.txt").write_text((prompts.Path(prompts.__file__).parent / "prompts" / "common.v1.txt")
                                            .read_text())
    (tmp_path / "compare-pages.v1.txt").write_text("Compare two pages.")
    prompts._load.cache_clear()
    try:
        segment = Segment(3, 10, ["Results"], "sections")
        text = prompts.render_prompt("compare-pages", segment)
        assert "comparison of two pages" in text and "Compare two pages." in text
        qa = {"question": "On pages 4 and 5, which is longer?", "answer": "page 4", "evidence_pages": [4, 5]}
        assert check_qa("compare-pages", qa, segment)["evidence_pages"] == [4, 5]
        with pytest.raises(Rejected, match="wrong_evidence_count"):
            check_qa("compare-pages", dict(qa, evidence_pages=[4]), segment)
    finally:
        prompts._load.cache_clear()
