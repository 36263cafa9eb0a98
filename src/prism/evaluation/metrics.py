"""Per-task metrics registered in ``prism.builtin_plugin`` (``"module:function"``).

Every metric is ``metric(predictions, *, gt=None, options=None) -> MetricResult``
where ``predictions`` are prediction records (``question_id``, ``text``,
``answer``, ``metadata``...). For item-level metrics ``gt`` may map
question_id -> answer (it wins over the record's ``answer``); for
``coco_caption`` it is the COCO caption ground truth. ``prism.evaluation.ground_truth``
reads the official ground-truth files and joins them to predictions for any metric.
The implementations live in small modules; this module is the stable import path.
"""

from __future__ import annotations

from prism.evaluation.captions import coco_caption, simple_tokenize
from prism.evaluation.grounding import box_iou, iou50, parse_box, parse_box_coin_compat
from prism.evaluation.loading import (
    PredictionFile,
    TruncatedPredictionWarning,
    check_coco_gt,
    load_coco_gt,
    load_predictions,
    read_predictions,
)
from prism.evaluation.normalize import normalize_vqa_answer
from prism.evaluation.result import MetricResult
from prism.evaluation.text_metrics import (
    anls,
    anls_score,
    containment,
    exact_match,
    exact_match_normalized,
    levenshtein,
    option_accuracy,
    parse_option_letter,
    vqa_accuracy,
    vqa_soft_score,
)

__all__ = [
    "MetricResult",
    "PredictionFile",
    "TruncatedPredictionWarning",
    "anls",
    "anls_score",
    "box_iou",
    "check_coco_gt",
    "coco_caption",
    "containment",
    "exact_match",
    "exact_match_normalized",
    "iou50",
    "levenshtein",
    "load_coco_gt",
    "load_predictions",
    "normalize_vqa_answer",
    "option_accuracy",
    "parse_box",
    "parse_box_coin_compat",
    "parse_option_letter",
    "read_predictions",
    "simple_tokenize",
    "vqa_accuracy",
    "vqa_soft_score",
]
