"""Scoring rules of the benchmarks the paper reports, besides MMLongBench-Doc's (``scoring.py``), written
from each benchmark's published scorer. Pure text, no model; nothing in a prediction is executed.

- **SlideVQA** (``evaluate.py`` of nttmdlab-nlp/SlideVQA): QA exact match and token F1 after its
  ``normalize_answer(s, question)``: lower case; drop "this is ", "it is ", "percent", "because
  (of)", "due to"; "&" and "and" become ","; "organisation" -> "organization", "hours" -> "hrs",
  "minites" -> "min"; drop the unit word after "how many" / "which" of the question; drop
  punctuation and articles; keep only the first word of an answer starting with yes/no; collapse
  spaces; number words zero..nineteen become digits. F1 and EM are averaged over questions.
- **LongDocURL** (dengc2023/LongDocURL): MMLongBench-Doc's rules with its format names
  (``Integer``, ``Float``, ``String``, ``List``, ``None``); results per ``task_tag``
  (Understanding, Reasoning, Locating) and in total.
- **MM-NIAH** (``calculate_scores.py`` of OpenGVLab/MM-NIAH): an ``int`` answer is a multiple-choice
  index read from a letter answer (after stripping periods, "the answer is" and ``*``; a digit answer is
  compared as a number); a ``list`` answer (counting) is scored by *soft accuracy*, the share of
  positions where the predicted JSON list equals the answer; any other answer is correct when, after
  VQA normalization (punctuation, number words to digits, articles, contractions), it appears in the
  prediction as a whole word. Per task, scores are averaged per context-length bin over the five
  depth bins (an empty cell counts 0, as in the reference), and the task score is the mean over the
  length bins that hold examples.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import numpy as np

# --- SlideVQA ----------------------------------------------------------------------------------------

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_SLIDE_REPLACE = (("this is ", ""), ("it is ", ""), ("&", ","), ("and", ","), ("percent", ""),
                  ("organisation", "organization"), ("because of", ""), ("because", ""), ("due to", ""),
                  ("hours", "hrs"), ("minites", "min"))


def slidevqa_normalize(text: str, question: str) -> str:
    """SlideVQA's ``normalize_answer`` (the steps in its order)."""
    s = str(text).lower()
    for old, new in _SLIDE_REPLACE:
        s = s.replace(old, new)
    for cue in ("how many", "which"):  # the question's unit word after the cue
        if cue in question:
            rest = question[question.find(cue) + len(cue):].split()
            if rest:
                s = s.replace(rest[0], "")
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    if s[:3] == "yes" or s[:2] == "no":
        s = s.split()[0]
    s = " ".join(s.split())
    return " ".join(_NUMBER_WORDS.get(w, w) for w in s.split())


def slidevqa_f1_em(answer: str, prediction: str, question: str) -> tuple[float, float]:
    """Token F1 and exact match of one SlideVQA answer."""
    gold = slidevqa_normalize(answer, question).split()
    pred = slidevqa_normalize(prediction, question).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0, 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall), float(pred == gold)


# --- LongDocURL --------------------------------------------------------------------------------------

LONGDOCURL_FORMATS = {"Integer": "Int", "Float": "Float", "String": "Str", "List": "List", "None": "None"}


# --- MM-NIAH -----------------------------------------------------------------------------------------

MMNIAH_LENGTH_BINS = (1000, 2000, 4000, 8000, 12000, 16000, 24000, 32000, 40000, 48000, 64000)
MMNIAH_DEPTH_BINS = 5
_VQA_NUMBERS = dict(_NUMBER_WORDS, twenty="20", thirty="30", forty="40", fifty="50", sixty="60",
                    seventy="70", eighty="80", ninety="90")
_CONTRACTIONS = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
                 "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
                 "hes": "he's", "im": "i'm", "ive": "i've", "isnt": "isn't", "itll": "it'll", "shouldnt": "shouldn't",
                 "thats": "that's", "theres": "there's", "theyre": "they're", "wasnt": "wasn't",
                 "werent": "weren't", "whats": "what's", "wont": "won't", "wouldnt": "wouldn't",
                 "youre": "you're"}
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
              "?", "!")
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")


def vqa_normalize(text: str) -> str:
    """The VQA normalization MM-NIAH's scorer applies to answers and predictions."""
    text = " ".join(str(text).replace("\n", " ").replace("\t", " ").split())
    out = text
    for p in _VQA_PUNCT:
        if p + " " in text or " " + p in text or _COMMA_NUMBER.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = [_VQA_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in ("a", "an", "the"))


def _has_word(sentence: str, word: str) -> bool:
    return re.search(r"\b" + re.escape(word) + r"\b", sentence) is not None


def mmniah_score(answer, response: str) -> float:
    """One MM-NIAH response's score: 0/1, or the soft accuracy of a counting list."""
    response = str(response).strip(".")
    if isinstance(answer, bool):
        answer = str(answer)
    if isinstance(answer, int):
        if response.isdigit():
            return float(int(response) == answer)
        text = response.lower().replace("the answer is", "").replace("*", "")
        if "." in text:
            text = text.split(".")[0].replace(",", "").strip()
        text = text.strip()
        return float(len(text) == 1 and ord(text) - ord("a") == answer)
    if isinstance(answer, list):
        try:
            value = json.loads(response.replace("json", "").replace("```", "").strip())
        except (json.JSONDecodeError, RecursionError):
            return 0.0
        if isinstance(value, dict):
            value = [v for part in value.values() for v in (part if isinstance(part, list) else [part])]
        if not isinstance(value, list) or not answer:
            return 0.0
        return sum(v == a for v, a in zip(value, answer)) / len(answer)
    golds = answer if isinstance(answer, list) else [answer]
    said = vqa_normalize(response)
    return float(any(_has_word(said, vqa_normalize(g)) for g in golds))


def mmniah_bin_scores(rows: list[dict]) -> dict:
    """MM-NIAH's per-task figure: per context-length bin, the mean over the depth bins (empty cells 0).
    Rows hold ``score``, ``context_length`` and ``placed_depth`` (a number or a list, averaged)."""
    total = np.zeros((len(MMNIAH_LENGTH_BINS) + 1, MMNIAH_DEPTH_BINS))
    correct = np.zeros_like(total)
    for row in rows:
        depth = row["placed_depth"]
        depth = sum(depth) / len(depth) if isinstance(depth, list) else float(depth)
        x = int(np.digitize(row["context_length"], MMNIAH_LENGTH_BINS))
        y = min(int(min(depth, 0.99) * MMNIAH_DEPTH_BINS), MMNIAH_DEPTH_BINS - 1)
        total[x, y] += 1
        correct[x, y] += row["score"]
    cells = np.divide(correct, total, out=np.zeros_like(correct), where=total != 0)[1:]
    per_bin = cells.mean(axis=1)
    used = total[1:].sum(axis=1) > 0
    labels = [f"{b // 1000}k" for b in MMNIAH_LENGTH_BINS]
    return {"by_length": {label: float(v) for label, v, u in zip(labels, per_bin, used) if u},
            "score": float(per_bin[used].mean()) if used.any() else 0.0}
