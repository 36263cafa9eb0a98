"""Item-level text metrics: exact match, containment, option letters, VQA
accuracy and ANLS. Each follows the reference evaluator named in
``reference/benchmarks.md`` to the character, because small differences here
move published numbers by points.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from prism.errors import DataError
from prism.evaluation._records import (
    answer_lookup,
    answer_strings,
    ground_truth,
    mean_percent,
    prediction_text,
    question_id,
)
from prism.evaluation.normalize import normalize_vqa_answer
from prism.evaluation.result import MetricResult

Predictions = Sequence[dict[str, Any]]


# --------------------------------------------------------------------------- exact match

def _upper_match(pred: str, answers: list[str]) -> bool:
    # upper(), not lower(): "Fußball".upper() == "FUSSBALL", as the reference scripts do.
    p = pred.strip().upper()
    return any(p == a.strip().upper() for a in answers)


def _normalized_match(pred: str, answers: list[str]) -> bool:
    p = normalize_vqa_answer(pred)
    return any(p == normalize_vqa_answer(a) for a in answers)


def _exact_scores(predictions: Predictions, gt: dict | None) -> tuple[list[float], list[float]]:
    answers_by_id = answer_lookup(gt)
    plain: list[float] = []
    normalized: list[float] = []
    for record in predictions:
        pred = prediction_text(record)
        answers = answer_strings(ground_truth(record, answers_by_id), record)
        plain.append(100.0 if _upper_match(pred, answers) else 0.0)
        normalized.append(100.0 if _normalized_match(pred, answers) else 0.0)
    return plain, normalized


def exact_match(predictions: Predictions, *, gt: dict | None = None,
                options: dict | None = None) -> MetricResult:
    """``pred.strip().upper() == answer.strip().upper()``; a list answer matches any.

    The normalised variant (VQA normalisation) is reported beside it in details.
    """
    plain, normalized = _exact_scores(predictions, gt)
    score = mean_percent(plain)
    return MetricResult(
        score=score, n=len(plain), per_item=plain,
        details={"exact_match": score, "exact_match_normalized": mean_percent(normalized)},
    )


def exact_match_normalized(predictions: Predictions, *, gt: dict | None = None,
                           options: dict | None = None) -> MetricResult:
    """Exact match after VQA normalisation (punctuation, articles, number words,
    contractions); the plain upper-case exact match is reported in details."""
    plain, normalized = _exact_scores(predictions, gt)
    score = mean_percent(normalized)
    return MetricResult(
        score=score, n=len(normalized), per_item=normalized,
        details={"exact_match": mean_percent(plain), "exact_match_normalized": score},
    )


# --------------------------------------------------------------------------- containment

def containment(predictions: Predictions, *, gt: dict | None = None,
                options: dict | None = None) -> MetricResult:
    """CoIN ImageNet: ``answer in pred or pred in answer`` after lower-casing.

    Both sides are stripped, and an empty prediction is a miss (``"" in answer``
    would otherwise always hit). ``options={"coin_compat": True}`` reproduces the
    published script: case-sensitive, unstripped, empty output counts as a hit.
    """
    compat = bool((options or {}).get("coin_compat", False))
    answers_by_id = answer_lookup(gt)
    items: list[float] = []
    empty = 0
    for record in predictions:
        pred = prediction_text(record)
        answers = answer_strings(ground_truth(record, answers_by_id), record)
        if compat:
            hit = any(a in pred or pred in a for a in answers)
        else:
            p = pred.strip().lower()
            empty += p == ""
            hit = p != "" and any(a.strip().lower() in p or p in a.strip().lower() for a in answers)
        items.append(100.0 if hit else 0.0)
    details = {"empty_predictions": float(empty)} if not compat else {"coin_compat": 1.0}
    return MetricResult(score=mean_percent(items), n=len(items), per_item=items, details=details)


# --------------------------------------------------------------------------- option letters

_SINGLE_LETTER = re.compile(r"^[(\[]?([A-Za-z])[)\]]?[.:]?$")
_LEADING_LETTER = re.compile(r"^[(\[]?([A-Z])(?:[)\]]|[.:,]|\s|$)")
_ARTICLE_OR_PRONOUN = re.compile(r"^[AI]\s+[a-z]")
_ANSWER_KEYWORD = re.compile(r"\b(?:answer|option|choice)(?:\s+is)?\s*[:\uff1a]?", re.IGNORECASE)
_STANDALONE_UPPER = re.compile(r"(?<![\w'\u2019])([A-Z])(?![\w'\u2019])")


def _letter_at_start(text: str) -> str | None:
    m = _SINGLE_LETTER.match(text)
    if m:
        return m.group(1).upper()
    m = _LEADING_LETTER.match(text)
    if m and not _ARTICLE_OR_PRONOUN.match(text):
        return m.group(1)
    return None


def parse_option_letter(text: str) -> str | None:
    """The option letter a model chose, or ``None``.

    Accepts "B", "b", "B.", "(B)", "B) cat", "B. cat", "The answer is B",
    "Answer: (C)". As a last resort the first standalone capital letter is used,
    skipping "A" and "I" when they read as an article or pronoun ("A dog",
    "I think").
    """
    t = text.strip()
    letter = _letter_at_start(t)
    if letter:
        return letter
    for m in _ANSWER_KEYWORD.finditer(t):
        letter = _letter_at_start(t[m.end():].strip())
        if letter:
            return letter
    for m in _STANDALONE_UPPER.finditer(t):
        if _ARTICLE_OR_PRONOUN.match(t[m.start():]):
            continue
        return m.group(1)
    return None


def _coin_option_letter(text: str, letters: str) -> str | None:
    """CoIN ScienceQA's published parser, kept for reproducing old numbers."""
    if text in letters and len(text) == 1:
        return text
    if len(text) >= 3 and text[0] in letters and text[1:3] == ". ":
        return text[0]
    found = re.findall(r"\b(\w)\b", text)
    return found[0].upper() if found else None


def option_accuracy(predictions: Predictions, *, gt: dict | None = None,
                    options: dict | None = None) -> MetricResult:
    """The option letter parsed from the output equals the answer letter.

    Options: ``coin_compat`` (CoIN's parser: exact letter, "B. ...", else the
    first one-character word upper-cased), ``letters`` (valid letters for the
    compat parser, default "ABCDE").
    """
    opts = options or {}
    compat = bool(opts.get("coin_compat", False))
    letters = str(opts.get("letters", "ABCDE"))
    answers_by_id = answer_lookup(gt)
    items: list[float] = []
    unparsed = 0
    for record in predictions:
        pred = prediction_text(record)
        answer = answer_strings(ground_truth(record, answers_by_id), record)[0]
        gold = parse_option_letter(answer) or answer.strip().upper()
        chosen = _coin_option_letter(pred, letters) if compat else parse_option_letter(pred)
        if compat and chosen is not None and chosen not in letters:
            chosen = None
        unparsed += chosen is None
        items.append(100.0 if chosen is not None and chosen == gold else 0.0)
    return MetricResult(score=mean_percent(items), n=len(items), per_item=items,
                        details={"unparsed": float(unparsed)})


# --------------------------------------------------------------------------- VQA accuracy

def vqa_soft_score(prediction: str, answers: Sequence[str]) -> float:
    """m4c/EvalAI soft score in [0, 1]: for each of the leave-one-out subsets of
    the (normalised) human answers, min(#matches / 3, 1); averaged."""
    pred = normalize_vqa_answer(prediction)
    normalized = [normalize_vqa_answer(a) for a in answers]
    total = 0.0
    for left_out in range(len(normalized)):
        matches = sum(1 for j, a in enumerate(normalized) if j != left_out and a == pred)
        total += min(matches / 3.0, 1.0)
    return total / len(normalized)


def vqa_accuracy(predictions: Predictions, *, gt: dict | None = None,
                 options: dict | None = None) -> MetricResult:
    """VQA v2 accuracy as CoIN/LLaVA compute it for TextVQA (10 human answers)."""
    answers_by_id = answer_lookup(gt)
    items: list[float] = []
    for record in predictions:
        pred = prediction_text(record)
        answers = answer_strings(ground_truth(record, answers_by_id), record)
        if len(answers) != 10:
            raise DataError(
                f"question_id {question_id(record)!r}: VQA accuracy needs the 10 human "
                f"answers, got {len(answers)}",
                hint="use exact_match_normalized for single-answer tasks",
            )
        items.append(100.0 * vqa_soft_score(pred, answers))
    return MetricResult(score=mean_percent(items), n=len(items), per_item=items)


# --------------------------------------------------------------------------- ANLS

def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls_score(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """lmms-eval's DocVQA ANLS for one question, in [0, 1].

    Strings are lower-cased, stripped and space-collapsed for the distance, but
    the distance is divided by the longer *raw* length (as ``len(s.upper())``,
    which is what the reference measures). The result is 1 - min distance, set
    to 0 when below the threshold (exactly 0.5 is kept).
    """
    pred_norm = " ".join(prediction.strip().lower().split())
    distances = []
    for answer in answers:
        answer_norm = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        distances.append(0.0 if length == 0 else levenshtein(answer_norm, pred_norm) / length)
    score = 1.0 - min(distances)
    return 0.0 if score < threshold else score


def anls(predictions: Predictions, *, gt: dict | None = None,
         options: dict | None = None) -> MetricResult:
    """Average normalised Levenshtein similarity, threshold 0.5 (``options["threshold"]``)."""
    threshold = float((options or {}).get("threshold", 0.5))
    answers_by_id = answer_lookup(gt)
    items: list[float] = []
    for record in predictions:
        pred = prediction_text(record)
        answers = answer_strings(ground_truth(record, answers_by_id), record)
        items.append(100.0 * anls_score(pred, answers, threshold))
    return MetricResult(score=mean_percent(items), n=len(items), per_item=items)
