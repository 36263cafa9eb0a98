"""Score one task's predictions with the metric its benchmark prescribes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prism.benchmarks.base import TaskSpec
from prism.plugins import registry


def score_task(spec: TaskSpec, root: Path, predictions: list[dict], project_dir: Path | None = None) -> Any:
    from prism.evaluation.metrics import load_coco_gt

    metric = registry("metric", project_dir).load(spec.metric)
    gt = load_coco_gt(root / spec.gt_file) if spec.gt_file else None
    return metric(predictions, gt=gt, options=dict(spec.metric_options) or None)
