"""IoU@0.5 for CoIN's grounding task (RefCOCO/+/g boxes as text).

Boxes are ``[x1, y1, x2, y2]`` in [0, 1]. Correct parsing is the default; CoIN's
published parser, which drops the first and last character of the bracket-free
text (so ``0.78`` as y2 becomes ``0.7`` and ``0.8`` becomes ``0.``), is offered
as ``options={"coin_compat": True}`` so that old numbers can be reproduced.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from prism.errors import DataError
from prism.evaluation._records import (
    answer_lookup,
    ground_truth,
    mean_percent,
    prediction_text,
    question_id,
)
from prism.evaluation.result import MetricResult

Box = tuple[float, float, float, float]

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
# The whole output must be one box: brackets (any number of them, as CoIN's evaluator
# deletes them all: "[[0.41, 0.06, 0.61, 0.26]]" is a box), four comma-separated numbers,
# an optional full stop. A sentence, 3 or 5 numbers, or nothing is a miss.
_BOX_TEXT = re.compile(
    rf"^[\[(\s]*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})[\])\s]*\.?$"
)


def parse_box(text: str) -> Box | None:
    """``"[0.1, 0.2, 0.5, 0.78]"`` (or ``"[[...]]"``) -> (0.1, 0.2, 0.5, 0.78); anything else -> None."""
    m = _BOX_TEXT.match(text.strip())
    if not m:
        return None
    x1, y1, x2, y2 = (float(g) for g in m.groups())
    return (x1, y1, x2, y2)


def parse_box_coin_compat(text: str) -> Box | None:
    """CoIN's published parser, bug included: one leading space removed, brackets
    deleted, then the first and last characters cut before splitting on commas."""
    if text[:1] == " ":
        text = text[1:]
    body = text.replace("[", "").replace("]", "")[1:-1]
    try:
        values = [float(part) for part in body.split(",")]
    except ValueError:
        return None
    if len(values) != 4:
        return None
    return (values[0], values[1], values[2], values[3])


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two corner boxes (0 when the union is empty)."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _target_box(answer: Any, record: dict[str, Any]) -> Box:
    """The ground-truth box: text as the model writes it, or a list of four numbers
    (also wrapped in one more list, ``[[x1, y1, x2, y2]]``)."""
    box: Box | None = None
    if isinstance(answer, Sequence) and not isinstance(answer, str) and len(answer) == 1:
        answer = answer[0]
    if isinstance(answer, str):
        box = parse_box(answer)
    elif isinstance(answer, Sequence) and len(answer) == 4:
        try:
            box = (float(answer[0]), float(answer[1]), float(answer[2]), float(answer[3]))
        except (TypeError, ValueError):
            box = None
    if box is None:
        raise DataError(
            f"question_id {question_id(record)!r}: ground-truth box {answer!r} is not "
            "[x1, y1, x2, y2]"
        )
    return box


def iou50(predictions: Sequence[dict[str, Any]], *, gt: dict | None = None,
          options: dict | None = None) -> MetricResult:
    """Share of predictions whose box has IoU strictly > 0.5 with the target.

    Unparseable outputs are misses and stay in the denominator; their count and
    the mean IoU of parsed boxes are in details.
    """
    compat = bool((options or {}).get("coin_compat", False))
    parse = parse_box_coin_compat if compat else parse_box
    answers_by_id = answer_lookup(gt)
    items: list[float] = []
    ious: list[float] = []
    unparsed = 0
    for record in predictions:
        pred = prediction_text(record)
        target = _target_box(ground_truth(record, answers_by_id), record)
        box = parse(pred)
        if box is None:
            unparsed += 1
            items.append(0.0)
            continue
        iou = box_iou(box, target)
        ious.append(iou)
        items.append(100.0 if iou > 0.5 else 0.0)
    details = {
        "unparsed": float(unparsed),
        "mean_iou_parsed": 100.0 * sum(ious) / len(ious) if ious else 0.0,
    }
    if compat:
        details["coin_compat"] = 1.0
    return MetricResult(score=mean_percent(items), n=len(items), per_item=items, details=details)
