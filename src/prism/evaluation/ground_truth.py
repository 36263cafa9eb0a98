"""Official ground truth for scoring a prediction file, whoever wrote it.

Other MCIT tools' prediction files carry no answers (or answers one cannot
trust), so ``prism eval score --gt`` reads the ground truth the field's
evaluators read, in the layout its authors publish. The layout is detected from
the file's shape:

* a benchmark's **test JSON**: a list of records with ``question_id`` and
  ``answer`` (a string or a list of acceptable answers), or, for grounding,
  ``answer_bbox`` (``"[x1, y1, x2, y2]"`` in [0, 1], as CoIN's test files have
  it; its ``size`` is not needed: CoIN scales both boxes by max(width, height),
  which leaves IoU unchanged);
* **TextVQA** annotations: ``{"data": [{"question_id", "answers": [10 strings]}]}``;
* **VQAv2** annotations: ``{"annotations": [{"question_id", "answers": [{"answer"}, ...]}]}``;
* **COCO caption** ground truth: ``{"images": [{"id", "file_name"}], "annotations": [...]}``.

Predictions are joined by ``question_id`` compared as text ("17" joins 17), or,
for caption metrics, to a ground-truth image by id or file name
(``caption_match.CaptionMatcher``), never by position. The score is over the predictions
that join, as the field's evaluators (m4c's TextVQA evaluator, CoIN's scripts,
lmms-eval) score the predictions they are given: a prediction without ground
truth is left out, never scored with its own ``answer`` copy, and ground-truth
questions without a prediction are not in the denominator either. Both are
counted in the result (``details``) and listed in the ``Join``, and a file where
nothing joins is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from prism.errors import DataError, UsageError
from prism.evaluation.result import MetricResult

#: Ground-truth kinds a metric reads (its ``gt_kind`` attribute; ``ANSWERS`` when it has none).
ANSWERS = "answers"  # question_id -> answer (a string, a list of acceptable strings, or a box)
CAPTIONS = "captions"  # COCO caption ground truth, joined by image

TEST_JSON = "test JSON"
TEXTVQA = "TextVQA annotations"
VQAV2 = "VQAv2 annotations"
COCO = "COCO caption ground truth"

ACCEPTED = (
    "a benchmark's test JSON (a list of records with question_id and answer, or answer_bbox for "
    "grounding); TextVQA annotations ({\"data\": [{question_id, answers: [10 strings]}]}); VQAv2 "
    "annotations ({\"annotations\": [{question_id, answers: [{answer}, ...]}]}); COCO caption ground "
    "truth ({\"images\": [{id, file_name}], \"annotations\": [{image_id, caption}]})"
)

PathLike = str | os.PathLike[str]


@dataclass
class GroundTruth:
    """A ground-truth file, read: ``answers`` (by question_id as text) or ``coco`` (captions)."""

    source: str
    layout: str
    answers: dict[str, Any] | None = None
    ids: dict[str, Any] = field(default_factory=dict)  # question_id as text -> as written in the file
    coco: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return CAPTIONS if self.coco is not None else ANSWERS


@dataclass
class Join:
    """Predictions matched to the ground truth, and what matched nothing on either side."""

    predictions: list[dict[str, Any]]  # in the order given; for answers, ``answer`` is the ground truth's
    without_gt: list[Any]  # question_ids of predictions the ground truth has nothing for
    without_prediction: list[Any]  # ground-truth question ids (image ids for captions) nobody predicted


# --------------------------------------------------------------------------- loading

def load_ground_truth(path: PathLike) -> GroundTruth:
    """Read a ground-truth file in any accepted layout; anything else is a ``DataError`` naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read ground truth {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"ground truth {p} is not UTF-8 text ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"ground truth {p} is not valid JSON ({exc})", hint=_jsonl_hint(text)) from exc
    return ground_truth_from_data(data, source=str(p))


def _jsonl_hint(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return f"--gt takes one JSON document in one of these layouts: {ACCEPTED}"
    return ("it looks like JSON Lines (one object per line), e.g. a prediction file; --gt takes the "
            f"benchmark's ground truth: {ACCEPTED}")


def ground_truth_from_data(data: Any, *, source: str = "<ground truth>") -> GroundTruth:
    """Detect the layout of parsed JSON ``data`` and read it (see the module docstring)."""
    if isinstance(data, list):
        if data and isinstance(data[0], dict) and "question_id" in data[0]:
            return _read_test_json(data, source)
    elif isinstance(data, dict):
        if "images" in data and "annotations" in data:
            from prism.evaluation.loading import check_coco_gt

            check_coco_gt(data, source=source)
            return GroundTruth(source=source, layout=COCO, coco=data)
        if isinstance(data.get("data"), list):
            return _read_vqa(data["data"], source, TEXTVQA, "data")
        annotations = data.get("annotations")
        if isinstance(annotations, list) and annotations and isinstance(annotations[0], dict) \
                and "question_id" in annotations[0]:
            return _read_vqa(annotations, source, VQAV2, "annotations")
    raise DataError(f"ground truth {source} is in no layout prism reads: it is {_shape(data)}",
                    hint=f"accepted: {ACCEPTED}")


def _shape(data: Any) -> str:
    """What a JSON document looks like, in a few words, for an error message."""
    if isinstance(data, dict):
        keys = ", ".join(repr(k) for k in list(data)[:8]) + (", ..." if len(data) > 8 else "")
        return f"a JSON object with keys {keys}" if data else "an empty JSON object"
    if isinstance(data, list):
        if not data:
            return "an empty JSON list"
        first = data[0]
        what = (f"an object with keys {', '.join(repr(k) for k in list(first)[:8])} (no question_id)"
                if isinstance(first, dict) else f"a {type(first).__name__}")
        return f"a JSON list of {len(data)} item(s) whose first is {what}"
    return f"a JSON {type(data).__name__}"


def _question_key(entry: Mapping[str, Any], where: str, label: str, seen: dict[str, str]) -> str:
    """The entry's question_id as text; ``seen`` maps those already read to their ``label``."""
    qid = entry.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        raise DataError(f"{where}: 'question_id' must be an integer or a string, got {qid!r}")
    key = str(qid)
    if key in seen:
        raise DataError(f"{where}: question_id {qid!r} already appeared in {seen[key]}",
                        hint="ground truth must hold one entry per question")
    seen[key] = label
    return key


def _is_answer(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and bool(value)
                                      and all(isinstance(a, str) for a in value))


def _read_test_json(records: list[Any], source: str) -> GroundTruth:
    answers: dict[str, Any] = {}
    ids: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for index, record in enumerate(records):
        label = f"record {index}"
        where = f"{source}: {label}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object, got {type(record).__name__}")
        key = _question_key(record, where, label, seen)
        if record.get("answer_bbox") is not None:
            # Grounding: the box is what is scored (CoIN's evaluator reads answer_bbox, not answer).
            answers[key] = record["answer_bbox"]
        elif _is_answer(record.get("answer")):
            answers[key] = record["answer"]
        else:
            raise DataError(f"{where} (question_id {record['question_id']!r}): needs 'answer' (a string or a "
                            f"non-empty list of strings) or 'answer_bbox', got answer {record.get('answer')!r}")
        ids[key] = record["question_id"]
    return GroundTruth(source=source, layout=TEST_JSON, answers=answers, ids=ids)


def _read_vqa(entries: list[Any], source: str, layout: str, field_name: str) -> GroundTruth:
    if not entries:
        raise DataError(f"ground truth {source} ({layout}) holds no question: '{field_name}' is empty")
    answers: dict[str, Any] = {}
    ids: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries):
        label = f"{field_name}[{index}]"
        where = f"{source}: {label}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
        key = _question_key(entry, where, label, seen)
        raw = entry.get("answers")
        if layout == VQAV2 and isinstance(raw, list):
            raw = [a.get("answer") if isinstance(a, dict) else a for a in raw]
        if not _is_answer(raw) or isinstance(raw, str):
            split = " (TextVQA's and VQAv2's test splits publish no answers: score the val split)" \
                if raw is None else ""
            shape = "a list of strings" if layout == TEXTVQA else 'a list of {"answer": string} objects'
            raise DataError(f"{where} (question_id {entry['question_id']!r}): 'answers' must be {shape}, "
                            f"got {entry.get('answers')!r}{split}")
        answers[key] = raw
        ids[key] = entry["question_id"]
    return GroundTruth(source=source, layout=layout, answers=answers, ids=ids)


# --------------------------------------------------------------------------- joining

def gt_kind(metric: Callable[..., Any]) -> str:
    """The kind of ground truth ``metric`` reads: its ``gt_kind`` attribute, else ``ANSWERS``."""
    return getattr(metric, "gt_kind", ANSWERS)


def join_predictions(predictions: Sequence[dict[str, Any]], gt: GroundTruth) -> Join:
    """Match predictions to ground truth by id (see the module docstring); never by order."""
    if gt.coco is not None:
        return _join_captions(predictions, gt.coco)
    assert gt.answers is not None
    joined: list[dict[str, Any]] = []
    without_gt: list[Any] = []
    predicted: set[str] = set()
    for record in predictions:
        key = str(record.get("question_id"))
        if key in gt.answers:
            joined.append({**record, "answer": gt.answers[key]})
            predicted.add(key)
        else:
            without_gt.append(record.get("question_id"))
    missing = [gt.ids.get(key, key) for key in gt.answers if key not in predicted]
    return Join(predictions=joined, without_gt=without_gt, without_prediction=missing)


def _join_captions(predictions: Sequence[dict[str, Any]], coco: dict[str, Any]) -> Join:
    from prism.evaluation.caption_match import CaptionMatcher

    matcher = CaptionMatcher(coco["images"])
    joined: list[dict[str, Any]] = []
    without_gt: list[Any] = []
    predicted: set[str] = set()
    for record in predictions:
        key, _ = matcher.find(record)
        if key is None:
            without_gt.append(record.get("question_id"))
        else:
            joined.append(record)
            predicted.add(key)
    missing = [image["id"] for image in coco["images"] if str(image["id"]) not in predicted]
    return Join(predictions=joined, without_gt=without_gt, without_prediction=missing)


def _examples(ids: Sequence[Any], limit: int = 3) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def score_against(metric: Callable[..., MetricResult], predictions: Sequence[dict[str, Any]], gt: GroundTruth,
                  *, options: dict | None = None, metric_id: str = "the metric",
                  predictions_source: str = "the predictions") -> tuple[MetricResult, Join]:
    """Score ``predictions`` against ``gt`` with ``metric``, over the predictions that join.

    The metric receives the joined predictions (their ``answer`` replaced by the
    ground truth's) and, as ``gt``, the question_id -> answer mapping or the COCO
    caption dict. ``details`` gains ``predictions_without_gt`` and
    ``gt_without_prediction``. A metric/ground-truth kind mismatch is a
    ``UsageError``; a file where no prediction joins is a ``DataError``.
    """
    wanted = gt_kind(metric)
    if wanted != gt.kind:
        if wanted == CAPTIONS:
            raise UsageError(f"{metric_id} scores captions against COCO caption ground truth; {gt.source} is "
                             f"{gt.layout} (question_id -> answer)",
                             hint="give the task's COCO caption file, e.g. UCIT's val_coco_type_3000.json")
        raise UsageError(f"{metric_id} compares answers by question_id; {gt.source} is COCO caption ground "
                         "truth, which only caption metrics (coco_caption) read",
                         hint="give the benchmark's test JSON or the TextVQA/VQAv2 annotation file")
    joined = join_predictions(predictions, gt)
    if not joined.predictions:
        by = "image id or file name" if gt.kind == CAPTIONS else "question_id"
        theirs = [i["id"] for i in gt.coco["images"]] if gt.coco is not None else list(gt.ids.values())
        raise DataError(
            f"none of the {len(predictions)} predictions in {predictions_source} has ground truth in "
            f"{gt.source} (joined by {by}): prediction question_ids look like {_examples(joined.without_gt)}; "
            f"the ground truth's ids like {_examples(theirs) or 'nothing (it is empty)'}",
            hint="the predictions and the ground truth must come from the same split of the same task")
    result = metric(joined.predictions, gt=gt.coco if gt.coco is not None else gt.answers, options=options)
    result.details["predictions_without_gt"] = float(len(joined.without_gt))
    result.details["gt_without_prediction"] = float(len(joined.without_prediction))
    return result, joined
