"""The paper's other benchmarks read from their own formats (samples in tests/data/, written from each
benchmark's published format) and scored by their own rules: hand-worked cases for SlideVQA, LongDocURL
and MM-NIAH; docqa at several context lengths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evaluation import docqa, mmniah
from evaluation.benchmarks import mmniah_bin_scores, mmniah_score, slidevqa_f1_em, slidevqa_normalize
from evaluation.config import DocQAConfig, EvalError, MMNiahConfig
from evaluation.prompt import PromptBuilder
from evaluation.run import run_task

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def builder(qwen_tokenizer):
    return PromptBuilder(qwen_tokenizer)


class Scripted:
    """A backend that answers each request id with a given prediction."""

    primary = True

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def run(self, requests, mode):
        for i, r in enumerate(requests):
            yield i, {"prediction": self.answers[r.id]}

    def describe(self) -> dict:
        return {"name": "scripted"}


# -- SlideVQA ---------------------------------------------------------------------------------------
def test_slidevqa_normalization_and_f1_by_hand():
    # "three apps": the unit after "how many" goes, the number word becomes a digit; the reference looks
    # for "how many" in the question as given, so a capitalized "How many" keeps the unit
    assert slidevqa_normalize("Three apps.", "how many apps are shown on slide 2?") == "3"
    assert slidevqa_f1_em("3", "three apps", "how many apps are shown on slide 2?") == (1.0, 1.0)
    assert slidevqa_f1_em("3", "three apps", "How many apps are shown on slide 2?") == (pytest.approx(2 / 3), 0.0)
    # "google and apple" -> "google , apple" -> tokens [google, apple]; "apple": p 1, r 1/2 -> F1 2/3
    f1, em = slidevqa_f1_em("Google and Apple", "Apple", "which company has the largest share?")
    assert f1 == pytest.approx(2 / 3) and em == 0.0
    assert slidevqa_f1_em("Yes", "yes, it does", "is it?") == (1.0, 1.0)  # a yes/no answer keeps its first word
    assert slidevqa_f1_em("10%", "12 percent", "what share?") == (0.0, 0.0)


def test_slidevqa_decks_in_slide_order_and_scored(tmp_path, builder, qwen_tokenizer_dir):
    config = DocQAConfig(input=str(DATA / "slidevqa" / "test.jsonl"), image_dir=str(DATA / "slidevqa" / "images"),
                         output=str(tmp_path / "out"), backend="openai", model="m", tokenizer=str(qwen_tokenizer_dir),
                         progress=False)
    requests = docqa.requests(config, builder)
    assert [r.id for r in requests] == ["101", "102"]
    assert [p.describe()["image"].rsplit("/", 1)[1] for p in requests[0].pages] == [
        "deck-a-1-1024.jpg", "deck-a-2-1024.jpg", "deck-a-3-1024.jpg"]
    assert (requests[0].pages[0].height, requests[0].pages[0].width) == (84, 112)  # 84x112: multiples of 28
    result = run_task("docqa", config, backend=Scripted({"101": "3", "102": "Apple"}))
    assert result.summary["slidevqa"] == {"f1": pytest.approx((1 + 2 / 3) / 2), "exact_match": 0.5}
    assert set(result.summary["by_task"]) == {"Single-hop", "Multi-hop"}


# -- LongDocURL -------------------------------------------------------------------------------------
def test_longdocurl_read_as_published_and_scored_per_task_tag(tmp_path, pdf_dir, qwen_tokenizer_dir):
    pdfs = tmp_path / "pdfs" / "4000-4999"
    pdfs.mkdir(parents=True)
    shutil.copy(pdf_dir / "float.pdf", pdfs / "4000001.pdf")  # the release's folder layout
    config = DocQAConfig(input=str(DATA / "longdocurl" / "LongDocURL.jsonl"), pdf_dir=str(tmp_path / "pdfs"),
                         dpi=36, output=str(tmp_path / "out"), backend="openai", model="m",
                         tokenizer=str(qwen_tokenizer_dir), progress=False)
    fmt, questions = docqa.read_questions(config.input)
    assert fmt == "longdocurl" and [q.answer_format for q in questions] == ["Int", "List", "Str"]
    assert questions[1].answer == '["here", "top"]' and questions[0].extra["task"] == "Reasoning"
    # by hand (MMLongBench-Doc's rules): 2 == int("2") -> 1; the list in the other order, sorted -> 1;
    # "Placement rules" vs "placement": ANLS 1 - 6/15 = 0.6 > 0.5 -> 0.6
    answers = {questions[0].id: "2", questions[1].id: "['top', 'here']", questions[2].id: "Placement rules"}
    result = run_task("docqa", config, backend=Scripted(answers))
    rows = {r["id"]: r["score"] for r in result.rows}
    assert rows == {questions[0].id: 1.0, questions[1].id: 1.0, questions[2].id: pytest.approx(0.6)}
    assert {k: v["acc"] for k, v in result.summary["by_task"].items()} == {
        "Locating": pytest.approx(0.6), "Reasoning": 1.0, "Understanding": 1.0}


def test_docqa_at_several_context_lengths(tmp_path, pdf_dir, builder, qwen_tokenizer_dir):
    (tmp_path / "pdfs").mkdir()
    shutil.copy(pdf_dir / "float.pdf", tmp_path / "pdfs" / "4000001.pdf")
    config = DocQAConfig(input=str(DATA / "longdocurl" / "LongDocURL.jsonl"), pdf_dir=str(tmp_path / "pdfs"),
                         dpi=36, context_lengths=["1K", "1500"], output=str(tmp_path / "out"), backend="openai",
                         model="m", tokenizer=str(qwen_tokenizer_dir), progress=False)
    requests = docqa.requests(config, builder)
    assert len(requests) == 6 and requests[0].id.endswith("@1K") and requests[1].id.endswith("@1500")
    for short, long in zip(requests[::2], requests[1::2]):
        assert short.num_tokens <= 1024 < long.num_tokens <= 1500  # 12 pages at 36 dpi do not fit either
        assert short.meta["context_length"] == "1K" and len(short.pages) < len(long.pages)
    result = run_task("docqa", config, backend=Scripted({r.id: "2" for r in requests}))
    assert set(result.summary["by_context_length"]) == {"1K", "1500"}
    assert all(r["prompt_tokens"] <= (1024 if r["context_length"] == "1K" else 1500) for r in result.rows)
    with pytest.raises(EvalError, match="exclude each other"):
        DocQAConfig(input="x", output="o", backend="openai", model="m", tokenizer="t", max_context="1K",
                    context_lengths=["2K"])


# -- MM-NIAH ----------------------------------------------------------------------------------------
def test_mmniah_scoring_rules_by_hand():
    # open answers: whole words after VQA normalization (articles, punctuation, number words)
    assert mmniah_score("the blue lighthouse", "It is the Blue Lighthouse.") == 1.0
    assert mmniah_score("blue lighthouse", "the blue lighthouses") == 0.0
    # a hyphen without spaces around it becomes a space, number words become digits: "40 2" in both
    assert mmniah_score("forty two", "The password is forty-two") == 1.0
    assert mmniah_score("42", "forty two") == 0.0 and mmniah_score("2", "two") == 1.0
    # multiple choice (int index): a letter, with or without decoration; a digit compares as a number
    assert mmniah_score(2, "C.") == 1.0 and mmniah_score(2, "The answer is **C**") == 1.0
    assert mmniah_score(2, "2") == 1.0 and mmniah_score(2, "B") == 0.0 and mmniah_score(2, "C or D") == 0.0
    # counting: soft accuracy, matches position by position over the answer's length
    assert mmniah_score([1, 0, 2], "[1, 0, 3]") == pytest.approx(2 / 3)
    assert mmniah_score([1, 0, 2], "```json\n[1, 0, 2]\n```") == 1.0
    assert mmniah_score([1, 0, 2], "[1]") == pytest.approx(1 / 3) and mmniah_score([1, 0, 2], "three") == 0.0


def test_mmniah_bins_as_its_scorer():
    rows = [{"score": 1.0, "context_length": 1500, "placed_depth": 0.3},
            {"score": 0.0, "context_length": 5000, "placed_depth": 1.0},
            {"score": 0.5, "context_length": 5500, "placed_depth": [0.1, 0.5]}]
    got = mmniah_bin_scores(rows)
    # by hand: 1k bin: one depth bin of five holds 1.0 -> 0.2; 4k bin: depth 1.0 -> bin 4 (0.99), 0.0, and
    # depth 0.3 -> bin 1, 0.5 -> (0 + 0.5) / 5 = 0.1; the task score averages the two bins: 0.15
    assert got["by_length"] == {"1k": pytest.approx(0.2), "4k": pytest.approx(0.1)}
    assert got["score"] == pytest.approx(0.15)


def test_mmniah_prompts_from_its_files_and_scores(tmp_path, qwen_tokenizer_dir, qwen_tokenizer):
    files = sorted(str(p) for p in (DATA / "mmniah").glob("*.jsonl"))
    config = MMNiahConfig(input=files, output=str(tmp_path / "out"), backend="openai", model="m",
                          tokenizer=str(qwen_tokenizer_dir), progress=False)
    assert config.page_markers is False  # MM-NIAH's prompt has none
    requests = {r.id: r for r in mmniah.requests(config, PromptBuilder(qwen_tokenizer, config.page_markers))}
    assert set(requests) == {"counting-text/0", "reasoning-image/0", "retrieval-image/0", "retrieval-text/0",
                             "retrieval-text/1"}
    text = qwen_tokenizer.decode(requests["retrieval-text/0"].expanded_ids())
    # interleaved as MM-NIAH puts it: text, image, text, image, text, then the question; no page markers
    assert "The harbour opened in 1850.\n<|vision_start|>" in text and "Page 1:" not in text
    assert text.index("blue lighthouse") < text.rindex("<|vision_end|>") < text.index("Where is the secret place?")
    assert text.endswith("Answer the question using a single word or phrase.<|im_end|>\n<|im_start|>assistant\n")
    choice = qwen_tokenizer.decode(requests["reasoning-image/0"].expanded_ids())
    assert len(requests["reasoning-image/0"].pages) == 4  # two in the context, two image choices
    assert "document?\nA. \n<|vision_start|>" in choice and "\nB. \n<|vision_start|>" in choice
    assert "Answer with the option's letter from the given choices directly." in choice
    assert "C. a red star" in qwen_tokenizer.decode(requests["retrieval-image/0"].expanded_ids())
    assert requests["retrieval-image/0"].answer == "C" and requests["counting-text/0"].answer == "[1, 0, 2]"

    answers = {"retrieval-text/0": "The blue lighthouse.", "retrieval-text/1": "forty",
               "retrieval-image/0": "C", "counting-text/0": "[1, 0, 3]", "reasoning-image/0": "A"}
    summary = run_task("mmniah", config, backend=Scripted(answers)).summary
    assert summary["tasks"]["retrieval-text"]["accuracy"] == 0.5
    # 1k bin (1500 tokens, depth 0.3): 1/5; 4k bin (5000, depth 0.9): 0 -> 0.1
    assert summary["tasks"]["retrieval-text"]["score"] == pytest.approx(0.1)
    assert summary["tasks"]["counting-text"]["accuracy"] == pytest.approx(2 / 3)
    assert summary["tasks"]["reasoning-image"]["accuracy"] == 0.0


def test_mmniah_bad_files_fail_clearly(tmp_path, qwen_tokenizer_dir):
    wrong = tmp_path / "needles.jsonl"
    wrong.write_text((DATA / "mmniah" / "retrieval-text-val.jsonl").read_text())
    with pytest.raises(EvalError, match="named after its task"):
        mmniah.read_items([str(wrong)])
    bad = tmp_path / "retrieval-text.jsonl"
    item = json.loads((DATA / "mmniah" / "retrieval-text-val.jsonl").read_text().splitlines()[0])
    bad.write_text(json.dumps(dict(item, images_list=item["images_list"][:1])) + "\n")
    with pytest.raises(EvalError, match=r"retrieval-text.jsonl:1: 2 <image> placeholders for 1 images"):
        mmniah.read_items([str(bad)])
