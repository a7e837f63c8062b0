"""MMLongBench-Doc scoring against hand-computed cases; predictions that are Python code never run."""

from __future__ import annotations

import ast
import builtins
import json
import sys

import pytest

from evaluation.scoring import acc_f1, anls, parse_list, score_answer, summarize
from longvlm import cli

CASES = [
    # (answer, prediction, format, expected score, why)
    ("3", "3", "Int", 1.0, "equal"),
    ("12", " 12 ", "Int", 1.0, "int() strips spaces"),
    ("3", "3.7", "Int", 1.0, "the reference truncates: int(float('3.7')) == 3"),
    ("3", "three", "Int", 0.0, "not a number"),
    ("3", "1e400", "Int", 0.0, "inf is no integer"),
    ("3", "Extracted answer: 3\nAnswer format: Integer", "Int", 1.0, "the extractor's format"),
    ("0.5", "0.504", "Float", 1.0, "|0.504-0.5| = 0.004 <= 1% of 0.504"),
    ("0.5", "0.51", "Float", 0.0, "0.01 > 1% of 0.51; rounded to 2 decimals 0.51 != 0.50"),
    ("0.5", "50%", "Float", 1.0, "'%' cleaned; 50 == 0.5 x 100"),
    ("20", "0.2", "Float", 1.0, "0.2 == 20 / 100"),
    ("12.5", "$12.5", "Float", 1.0, "'$' cleaned"),
    ("3.14", "pi", "Float", 0.0, "not a number"),
    ("Paris", "paris", "Str", 1.0, "lower-cased"),
    ("The Eiffel Tower (Paris)", "the eiffel tower", "Str", 1.0, "parentheses removed"),
    ("kitten", "sitting", "Str", 1 - 3 / 7, "ANLS: distance 3 over length 7 = 0.571 > 0.5"),
    ("abcd", "abxy", "Str", 0.0, "ANLS 1 - 2/4 = 0.5 is not > 0.5"),
    ("https://example.com/a", "https://example.com/b", "Str", 0.0, "URLs are compared exactly"),
    ("john@doe.com", "John@doe.com", "Str", 1.0, "emails exactly, after lower-casing"),
    ("2023-05-01", "2023-05-02", "Str", 0.0, "dates exactly"),
    ("Not answerable", "Not answerable", "None", 1.0, "unanswerable, answered so"),
    ("Not answerable", "42", "None", 0.0, "unanswerable, answered anyway"),
    ("['a', 'b']", '["b", "a"]', "List", 1.0, "item by item, order ignored"),
    ("[1, 2]", "[2, 1]", "List", 1.0, "numbers: exact after sorting"),
    ("[1, 2]", "[1, 2, 3]", "List", 0.0, "lengths differ"),
    ("['apple pie', 'banana']", "['apple pi', 'banana']", "List", 1 - 1 / 9, "min ANLS: 1 - 1/9"),
    ("[2.50, 3]", "['2.5', '3']", "List", 1.0, "2.50 as a number reads 2.5"),
    ("['1', '2']", "['1', '3']", "List", 0.0, "number items exactly"),
    ("['x']", "x", "List", 1.0, "a bare prediction is a one-item list"),
    ("4729153", "The code is 4729153.", "Needle", 1.0, "the value appears in the prediction"),
    ("4729153", "4729135", "Needle", 0.0, "a wrong value"),
]


@pytest.mark.parametrize("answer,prediction,fmt,expected,why", CASES, ids=[c[4] for c in CASES])
def test_scores_by_hand(answer, prediction, fmt, expected, why):
    assert score_answer(answer, prediction, fmt) == pytest.approx(expected, abs=1e-12), why


def test_anls_is_levenshtein_over_the_longer_length():
    assert anls("flaw", "lawn") == 0.0  # distance 2, length 4: 0.5 is not > 0.5
    assert anls("saturday", "sunday") == pytest.approx(1 - 3 / 8)
    assert anls("", "") == 1.0


def test_parse_list_reads_json_and_python_literals_as_data():
    assert parse_list('["a", 2, 2.5]') == ["a", "2", "2.5"]
    assert parse_list("['it\\'s', \"b, c\", 007, 1e3]") == ["it's", "b, c", "7", "1000.0"]
    assert parse_list("[apple, banana]") == ["apple", "banana"]
    assert parse_list("not a list") is None


CODE = [
    "__import__('os').system('touch {marker}')",
    "[__import__('os').system('touch {marker}'), __import__('evilmod')]",
    "[open('{marker}', 'w').write('x')]",
    "exec(\"open('{marker}', 'w')\")",
    "Extracted answer: [__import__('evilmod')]\nAnswer format: List",
]


@pytest.mark.parametrize("fmt", ["Int", "Float", "Str", "None", "List", "Needle"])
def test_predictions_that_are_python_code_never_run(fmt, tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("evilmod", None)

    def forbidden(*args, **kwargs):
        raise AssertionError("scoring evaluated text")

    # eval and literal_eval are refused while scoring (exec and imports are caught by their effects:
    # importlib itself runs exec/compile, so patching those would break unrelated imports)
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "eval", forbidden)
        patch.setattr(ast, "literal_eval", forbidden)
        scores = [score_answer("[1, 2]" if fmt == "List" else "42", code.format(marker=marker), fmt) for code in CODE]
        # the answer side is data too (a List answer in the file is not evaluated either)
        scores.append(score_answer(CODE[1].format(marker=marker), "x", "List"))
    assert scores == [0.0] * len(scores)
    assert not marker.exists()
    assert "evilmod" not in sys.modules


def test_acc_and_f1_by_hand():
    rows = [
        {"answer": "A", "prediction": "A", "score": 1.0},
        {"answer": "B", "prediction": "Not answerable", "score": 0.0},
        {"answer": "Not answerable", "prediction": "Not answerable", "score": 1.0},
        {"answer": "C", "prediction": "x", "score": 0.6},
    ]
    acc, f1 = acc_f1(rows)
    assert acc == pytest.approx(2.6 / 4)
    recall, precision = 1.6 / 3, 1.6 / 2  # answerable: A, B, C; answered (not "Not answerable"): A, C
    assert f1 == pytest.approx(2 * recall * precision / (recall + precision))


def test_summary_groups():
    rows = [
        {"answer": "1", "answer_format": "Int", "prediction": "1", "evidence_pages": [3], "doc_type": "Report"},
        {"answer": "[1, 2]", "answer_format": "List", "prediction": "[1]", "evidence_pages": [3, 5],
         "doc_type": "Report"},
        {"answer": "Not answerable", "answer_format": "None", "prediction": "Not answerable", "evidence_pages": [],
         "doc_type": "Guide"},
    ]
    for r in rows:
        r["score"] = score_answer(r["answer"], r["prediction"], r["answer_format"])
    s = summarize(rows)
    assert s["n"] == 3 and s["acc"] == pytest.approx(2 / 3)
    assert s["by_answer_format"]["List"] == {"n": 1, "acc": 0.0, "f1": 0.0}
    assert {k: v["n"] for k, v in s["by_evidence"].items()} == {"single-page": 1, "cross-page": 1, "unanswerable": 1}
    assert {k: v["n"] for k, v in s["by_evidence_pages"].items()} == {"0": 1, "1": 1, "2": 1}
    assert s["by_doc_type"]["Report"]["acc"] == pytest.approx(0.5)


def test_eval_score_cli(tmp_path, capsys):
    predictions = tmp_path / "predictions.jsonl"
    rows = [{"question": "q1", "answer": "3", "answer_format": "Int", "prediction": "3"},
            {"question": "q2", "answer": "kitten", "answer_format": "Str", "prediction": "sitting"},
            {"question": "q3", "answer": "[1, 2]", "answer_format": "List",
             "prediction": "[__import__('os').system('touch PWNED')]"}]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = tmp_path / "scored.jsonl"
    assert cli.main(["eval", "score", str(predictions), "--json", "-o", str(scored)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 3 and summary["acc"] == pytest.approx((1 + 4 / 7) / 3)
    assert [json.loads(line)["score"] for line in scored.read_text().splitlines()] == pytest.approx([1, 4 / 7, 0])
    assert cli.main(["eval", "score", str(predictions)]) == 0
    table = capsys.readouterr().out
    assert "Acc 0.5238" in table and "answer format" in table

    predictions.write_text(json.dumps({"question": "q", "answer": "3", "answer_format": "Integer",
                                       "prediction": "3"}) + "\n")
    assert cli.main(["eval", "score", str(predictions)]) == 2
    err = capsys.readouterr().err
    assert f"{predictions}:1: answer_format 'Integer'" in err and "Traceback" not in err


def test_eval_score_reads_mmlongbench_string_lists_and_groups_as_its_scorer(tmp_path, capsys):
    """MMLongBench-Doc's samples.json keeps evidence_pages as strings ("[3, 5]"); its show_results puts
    every one-page question in single-page (unanswerable ones too), and cross-page is answerable only."""
    rows = [{"question": "q1", "answer": "7", "answer_format": "Int", "prediction": "7",
             "evidence_pages": "[12]", "evidence_sources": "['Table']"},
            {"question": "q2", "answer": "x y", "answer_format": "Str", "prediction": "x y",
             "evidence_pages": "[3, 10]", "evidence_sources": "['Pure-text (Plain-text)', 'Chart']"},
            {"question": "q3", "answer": "Not answerable", "answer_format": "None", "prediction": "Not answerable",
             "evidence_pages": "[4]", "evidence_sources": "[]"},
            {"question": "q4", "answer": "Not answerable", "answer_format": "None", "prediction": "no",
             "evidence_pages": "[]", "evidence_sources": "[]"}]
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["eval", "score", str(predictions), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    # by hand: single-page = q1 (1) and q3 (1); cross-page = q2 (1); unanswerable = q3 (1) and q4 (0)
    assert s["by_evidence"] == {"single-page": {"n": 2, "acc": 1.0, "f1": pytest.approx(s["by_evidence"]["single-page"]["f1"])},
                                "cross-page": {"n": 1, "acc": 1.0, "f1": 1.0},
                                "unanswerable": {"n": 2, "acc": 0.5, "f1": 0.0}}
    assert {k: v["n"] for k, v in s["by_evidence_pages"].items()} == {"0": 1, "1": 2, "2": 1}  # not 4 and 7 chars
    assert s["by_evidence_source"]["Table"]["n"] == 1 and s["by_evidence_source"]["Chart"]["n"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(dict(rows[0], evidence_pages="page twelve")) + "\n")
    assert cli.main(["eval", "score", str(bad)]) == 2
    assert "bad.jsonl:1: 'evidence_pages' must" in capsys.readouterr().err
