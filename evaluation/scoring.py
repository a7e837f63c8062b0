"""Answer scoring: the MMLongBench-Doc rules, and the needle rule of NIAH. Pure text, no model.

MMLongBench-Doc (``eval/eval_score.py`` of its reference code) scores one answer by its format:

- ``Int``: ``int(answer) == int(float(prediction))``;
- ``Float``: after cleaning, the prediction is within 1% (``isclose(rel_tol=0.01)``) of the answer,
  of answer x 100 or of answer / 100, or equal to one of them rounded to
  ``max(min(decimals of both), 2)`` decimals;
- ``Str`` and ``None``: after cleaning, exact equality when the answer looks like a URL, a file
  name (``.py``/``ipynb``), ``page ...``, a phone number, a time (``a.m.``/``p.m.``), a date
  (``YYYY-MM-DD``, ``YYYY-MM``) or an email address; otherwise ANLS: ``1 - levenshtein / max
  length``, and 0 when that is <= 0.5;
- ``List``: answer and prediction parsed as lists; 0 when their lengths differ; else the cleaned,
  sorted items are compared: exactly (joined) when the first answer item is a number or looks
  exact, else the score is the smallest ANLS over the item pairs.

Cleaning (``clean``) lower-cases and strips, removes parenthesized parts, one leading/trailing
quote, a leading ``$`` and a trailing ``%``. (The reference also tries to strip ``mile(s)`` and
``million`` but discards the result; so does this code, so scores stay comparable.)

Acc is the mean score; F1 combines recall (mean score over answerable questions) with precision
(summed answerable scores over the predictions that are not "Not answerable").

The reference ``eval()``s list answers and predictions. Here lists are parsed as data only (JSON,
or Python-style literals read by :func:`parse_list`): nothing in a prediction is ever executed or
imported. A prediction holding ``Extracted answer: X`` (the format of MMLongBench-Doc's answer
extractor) is scored on ``X``; any other prediction on its stripped text.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable

from rapidfuzz.distance import Levenshtein

ANSWER_FORMATS = ("Int", "Float", "Str", "List", "None", "Needle")
NOT_ANSWERABLE = "Not answerable"
ANLS_THRESHOLD = 0.5


# --- text helpers (the reference's) -----------------------------------------------------------------

def clean(text) -> str:
    """MMLongBench-Doc's ``get_clean_string``: lower-case, no parentheses, quotes, ``$`` or ``%``."""
    s = str(text).lower().strip()
    s = re.sub(r"\s*\([^)]*\)", "", s).strip()
    s = re.sub(r"^['\"]|['\"]$", "", s).strip()
    s = s.strip().lstrip("$").strip()
    return s.strip().rstrip("%").strip()


def looks_exact(s: str) -> bool:
    """MMLongBench-Doc's ``is_exact_match``: answers compared exactly rather than by ANLS."""
    return ("https://" in s or s.endswith((".py", "ipynb")) or s.startswith("page")
            or re.fullmatch(r"\b\d+(-\d+|\s\d+)?\b", s) is not None
            or "a.m." in s or "p.m." in s
            or re.fullmatch(r"\b\d{4}[-\s]\d{2}[-\s]\d{2}\b", s) is not None
            or re.fullmatch(r"\b\d{4}[-\s]\d{2}\b", s) is not None
            or re.fullmatch(r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}", s) is not None)


def anls(answer: str, prediction: str, threshold: float = ANLS_THRESHOLD) -> float:
    """``1 - levenshtein / max length`` (0 for two empty strings' distance), 0 when <= ``threshold``."""
    length = max(len(answer.upper()), len(prediction.upper()))
    value = 1.0 - (Levenshtein.distance(answer, prediction) / length if length else 0.0)
    return 0.0 if value <= threshold else value


def _float(text) -> float | None:
    """``float(text)`` or None (Python's number syntax; never evaluates anything)."""
    try:
        return float(str(text))
    except (ValueError, OverflowError):
        return None


def _decimals(value: float) -> int:
    text = str(value)
    return len(text.split(".")[-1]) if "." in text else 3


def float_equal(answer: float, prediction: float) -> bool:
    """The reference's ``is_float_equal(include_percentage=True, is_close=True)``."""
    for item in (answer / 100, answer, answer * 100):
        if math.isclose(item, prediction, rel_tol=0.01):
            return True
        if math.isfinite(item) and math.isfinite(prediction):
            digits = max(min(_decimals(prediction), _decimals(item)), 2)
            if round(prediction, digits) == round(item, digits):
                return True
    return False


# --- lists, parsed as data ----------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _split_top_level(inner: str) -> list[str]:
    """Comma-separated items of a list body; commas inside quotes or brackets do not split."""
    items, depth, quote, start, i = [], 0, None, 0, 0
    while i < len(inner):
        c = inner[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
        i += 1
    items.append(inner[start:])
    return [item.strip() for item in items if item.strip()]


def _item(token: str) -> str:
    """One list item as the text the reference's ``str(eval(...)[i])`` would give for literals."""
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        body = token[1:-1]
        try:
            return json.loads(f'"{body}"') if token[0] == '"' else body.replace("\\'", "'").replace("\\\\", "\\")
        except json.JSONDecodeError:
            return body
    if _INT.fullmatch(token):
        return str(int(token))
    if _FLOAT.fullmatch(token):
        return str(float(token))
    return token


def parse_list(text) -> list[str] | None:
    """The items (as text) of a list written as JSON or a Python-style literal, else None.

    ``'["a", 2]'``, ``"['a', 2.50]"`` and ``"[a, b]"`` are lists; quoted items lose their quotes,
    numbers are normalized (``2.50`` -> ``"2.5"``). Anything else in brackets is kept as its text.
    """
    if isinstance(text, list):
        return [str(v) for v in text]
    s = str(text).strip()
    if not (s.startswith("[") and s.endswith("]")):
        return None
    try:
        value = json.loads(s)
        if isinstance(value, list):
            return [v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                    for v in value]
    except (json.JSONDecodeError, RecursionError):
        pass
    return [_item(token) for token in _split_top_level(s[1:-1])]


# --- one answer --------------------------------------------------------------------------------------

def extract_prediction(prediction: str | None) -> str:
    """The answer part of a model output: after ``Extracted answer:`` (and before ``Answer format:``)
    when present, else the whole output; stripped."""
    text = "" if prediction is None else str(prediction)
    if "Extracted answer:" in text:
        text = text.split("Answer format:")[0].split("Extracted answer:")[1]
    return text.strip()


def _score_int(answer, prediction: str) -> float:
    try:
        gold = int(str(answer).strip())
    except ValueError:
        gold_float = _float(answer)
        if gold_float is None or not gold_float.is_integer():
            return 0.0
        gold = int(gold_float)
    value = _float(prediction)
    if value is None or not math.isfinite(value):
        return 0.0
    return float(gold == int(value))


def _score_float(answer, prediction: str) -> float:
    gold, value = _float(clean(answer)), _float(clean(prediction))
    if gold is None or value is None:
        return 0.0
    return float(float_equal(gold, value))


def _score_str(answer, prediction: str) -> float:
    gold, value = clean(answer), clean(prediction)
    if looks_exact(gold):
        return float(gold == value)
    return anls(gold, value)


def _score_list(answer, prediction: str) -> float:
    gold = parse_list(answer)
    gold = [str(answer)] if gold is None else gold
    value = parse_list(prediction)
    value = [prediction] if value is None else value
    if len(gold) != len(value):
        return 0.0
    if not gold:
        return 1.0
    gold = sorted(clean(a) for a in gold)
    value = sorted(clean(a) for a in value)
    if _float(gold[0]) is not None or looks_exact(gold[0]):
        return float("-".join(gold) == "-".join(value))
    return min(anls(a, b) for a, b in zip(gold, value))


def _normalize_space(text: str) -> str:
    return " ".join(text.casefold().split())


def needle_score(answer, prediction: str) -> float:
    """NIAH: 1 when the needle's value appears in the prediction (case and spacing ignored), else 0."""
    return float(_normalize_space(str(answer)) in _normalize_space(prediction))


def needle_exact(answer, prediction: str) -> bool:
    """NIAH, strict: the prediction is the value and nothing else (case, spacing, a final period ignored)."""
    return _normalize_space(prediction).rstrip(".") == _normalize_space(str(answer))


_SCORERS = {"Int": _score_int, "Float": _score_float, "Str": _score_str, "None": _score_str,
            "List": _score_list, "Needle": needle_score}


def score_answer(answer, prediction: str | None, answer_format: str) -> float:
    """The score in [0, 1] of ``prediction`` (raw model output) for ``answer`` of ``answer_format``."""
    if answer_format not in _SCORERS:
        raise ValueError(f"unknown answer_format {answer_format!r}; expected one of {', '.join(ANSWER_FORMATS)}")
    return _SCORERS[answer_format](answer, extract_prediction(prediction))


# --- many answers ------------------------------------------------------------------------------------

def acc_f1(rows: list[dict]) -> tuple[float, float]:
    """MMLongBench-Doc's Acc and F1 over rows with ``answer``, ``prediction`` and ``score``."""
    if not rows:
        return 0.0, 0.0
    acc = sum(r["score"] for r in rows) / len(rows)
    answerable = [r for r in rows if str(r["answer"]) != NOT_ANSWERABLE]
    answered = [r for r in rows if extract_prediction(r.get("prediction")) != NOT_ANSWERABLE]
    if not answerable or not answered:
        return acc, 0.0
    hits = sum(r["score"] for r in answerable)
    recall, precision = hits / len(answerable), hits / len(answered)
    f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
    return acc, f1


def evidence_classes(row: dict) -> list[str]:
    """MMLongBench-Doc's question groups as its scorer (``show_results``) forms them: ``single-page``
    (one evidence page, whatever the answer), ``cross-page`` (not one page, answerable) and
    ``unanswerable``; an unanswerable question with one evidence page is in two groups."""
    unanswerable = str(row["answer"]) == NOT_ANSWERABLE
    single = len(row.get("evidence_pages") or []) == 1
    return (["single-page"] if single else [] if unanswerable else ["cross-page"]) + \
        (["unanswerable"] if unanswerable else [])


def _groups(rows: list[dict], key, order: tuple[str, ...] = ()) -> dict[str, dict]:
    """Acc/F1 per group; ``key(row)`` lists the row's groups; groups in ``order`` first, then by name."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        for k in key(row):
            grouped[str(k)].append(row)
    out = {}
    rank = {name: i for i, name in enumerate(order)}
    for k in sorted(grouped, key=lambda k: (rank.get(k, len(rank)), len(k), k)):
        acc, f1 = acc_f1(grouped[k])
        out[k] = {"n": len(grouped[k]), "acc": acc, "f1": f1}
    return out


def summarize(rows: Iterable[dict]) -> dict:
    """Overall Acc/F1 and per answer format, evidence class, evidence-page count and, where the rows
    have them, evidence source, document type and task."""
    rows = list(rows)
    acc, f1 = acc_f1(rows)
    summary = {"n": len(rows), "acc": acc, "f1": f1,
               "by_answer_format": _groups(rows, lambda r: [r["answer_format"]], ANSWER_FORMATS),
               "by_evidence": _groups(rows, evidence_classes,
                                      ("single-page", "cross-page", "unanswerable")),
               "by_evidence_pages": _groups(rows, lambda r: [min(len(r.get("evidence_pages") or []), 4)])}
    if "4" in summary["by_evidence_pages"]:
        summary["by_evidence_pages"]["4+"] = summary["by_evidence_pages"].pop("4")
    for field, name in (("evidence_sources", "by_evidence_source"), ("doc_type", "by_doc_type"),
                        ("task", "by_task"), ("context_length", "by_context_length")):
        if any(r.get(field) for r in rows):
            summary[name] = _groups(rows, lambda r, f=field: (r.get(f) if isinstance(r.get(f), list)
                                                             else [r.get(f) or "-"]))
    return summary
