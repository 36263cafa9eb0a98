"""Printing an accuracy matrix and its metrics (shared by train, infer and eval)."""

from __future__ import annotations

from typing import Any


def print_matrix(console: Any, matrix: Any, summary: dict, title: str = "") -> None:
    from prism.evaluation.matrix import render_table

    console.print(render_table(matrix, summary, title=title))


def result_json(layout: Any, matrix: Any, summary: dict) -> dict:
    return {
        "benchmark": layout.benchmark, "method": layout.method, "backbone": layout.backbone,
        "tasks": list(matrix.task_names), "matrix": matrix.to_list(), "cl_metrics": summary,
        "results_dir": str(layout.results_dir), "checkpoints_dir": str(layout.checkpoints_dir),
    }
