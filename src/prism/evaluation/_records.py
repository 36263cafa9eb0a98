"""Shared checks for prediction records, so every metric fails the same way.

Metrics receive records without file positions, so errors name the
``question_id``; ``load_predictions`` names file and line.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from prism.errors import DataError


def question_id(record: Mapping[str, Any]) -> Any:
    return record.get("question_id", "<missing question_id>")


def prediction_text(record: Mapping[str, Any]) -> str:
    """The model output; a missing or non-string ``text`` is a data error."""
    text = record.get("text")
    if not isinstance(text, str):
        raise DataError(
            f"prediction for question_id {question_id(record)!r} has no string 'text' "
            f"(got {type(text).__name__})"
        )
    return text


def answer_lookup(gt: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    """``gt`` for non-caption metrics maps question_id -> answer (keys compared as str)."""
    if gt is None:
        return None
    return {str(k): v for k, v in gt.items()}


def ground_truth(record: Mapping[str, Any], answers: Mapping[str, Any] | None) -> Any:
    """The record's answer; ``gt`` (matched by question_id, never by order) wins."""
    if answers is not None and str(record.get("question_id")) in answers:
        return answers[str(record.get("question_id"))]
    if "answer" in record and record["answer"] is not None:
        return record["answer"]
    raise DataError(
        f"prediction for question_id {question_id(record)!r} has no 'answer' and the "
        "ground truth given has none for it"
    )


def answer_strings(answer: Any, record: Mapping[str, Any]) -> list[str]:
    """An answer as a non-empty list of strings (a single string becomes a list)."""
    if isinstance(answer, str):
        return [answer]
    if isinstance(answer, Sequence) and answer and all(isinstance(a, str) for a in answer):
        return list(answer)
    raise DataError(
        f"question_id {question_id(record)!r}: answer must be a string or a non-empty "
        f"list of strings, got {answer!r}"
    )


def mean_percent(values: Sequence[float]) -> float:
    """Mean of 0-100 per-item values; an empty task scores 0.0 (n says why).

    ``fsum`` is exactly rounded, so the mean does not depend on the order of the
    predictions (a plain ``sum`` can differ in the last digit between orders)."""
    return math.fsum(values) / len(values) if values else 0.0
