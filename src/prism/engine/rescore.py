"""Score a run from its prediction files alone (no model): the matrix, CL metrics, plots, report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prism.engine.evaluate import CL_METRICS_FILE, MATRIX_FILE, add_routing, summarize
from prism.engine.scoring import score_task
from prism.engine.run_record import read_run_record
from prism.engine.session import plan_run
from prism.errors import DataError, PrismError


def rescore(resolved: Any) -> tuple[Any, Any, dict]:
    from prism.checkpoint.store import write_json_atomic
    from prism.evaluation.matrix import AccuracyMatrix
    from prism.evaluation.metrics import load_predictions

    plan = plan_run(resolved)
    layout = plan.layout
    root = plan.benchmark.root
    matrix = AccuracyMatrix([t.name for t in plan.sequence])
    found = False
    for position, index in enumerate(plan.indices):
        folder = layout.predictions(index)
        for i, spec in enumerate(plan.sequence[: position + 1]):
            path = folder / f"{spec.name}.jsonl"
            if not path.is_file():
                continue
            found = True
            predictions = load_predictions(path)
            if not predictions:
                _check_test_set_is_empty(path, spec, root, resolved.config.benchmark.max_test_samples)
            matrix.set(position, i, score_task(spec, root, predictions, resolved.project_dir).score)
    if not found:
        raise PrismError(f"no prediction files under {layout.predictions_dir}",
                         hint="run `prism train` (or `prism infer` on saved checkpoints) first")
    summary = summarize(matrix, joint=bool(getattr(resolved.method_class, "joint", False)))
    add_routing(summary, layout, plan.indices, [t.name for t in plan.sequence])
    if resolved.config.infer.task_oracle:
        summary["task_oracle"] = True
    layout.results_dir.mkdir(parents=True, exist_ok=True)
    matrix.save(layout.results_dir / MATRIX_FILE)
    write_json_atomic(layout.results_dir / CL_METRICS_FILE, summary)
    return layout, matrix, summary


def _check_test_set_is_empty(path: Path, spec: Any, root: Path, max_samples: int | None) -> None:
    """A run's prediction file without a single line is damage (a lost write, an inference killed
    before its first batch), not a 0.0, unless the task has no test question at all."""
    from prism.benchmarks.records import load_test_records

    hint = (f"rerun `prism infer` for this run to regenerate it (lines already written are kept), "
            f"or delete {path.name} to leave the cell empty")
    try:
        questions = len(load_test_records(root, spec, max_samples=max_samples))
    except DataError as exc:
        raise DataError(f"prediction file {path} holds no prediction, and task {spec.name}'s test set "
                        f"could not be read to tell whether it has any question: {exc.message}",
                        hint=hint) from exc
    if questions:
        raise DataError(f"prediction file {path} holds no prediction, but task {spec.name} has "
                        f"{questions} test question(s): the file is damaged or its inference never "
                        "wrote a batch", hint=hint)


def compared_run(resolved: Any) -> dict[str, Any]:
    """One method's entry of ``prism eval compare``: its rescored matrix, CL metrics and cost columns."""
    from prism.evaluation.costs import compare_columns

    layout, matrix, summary = rescore(resolved)
    return {"matrix": matrix, "summary": summary,
            "costs": compare_columns(read_run_record(layout.results_dir).get("costs"))}


def write_artifacts(resolved: Any, layout: Any, matrix: Any, summary: dict) -> dict[str, Path]:
    """Heatmap, per-task line plot and the Markdown report next to the matrix."""
    from prism.evaluation.plots import plot_heatmap, plot_task_curves, run_title
    from prism.evaluation.report import write_report

    results = layout.results_dir
    run = {"method": layout.method, "benchmark": layout.benchmark, "backbone": layout.backbone}
    heatmap = plot_heatmap(matrix, results / "accuracy_matrix.png", title=run_title("accuracy matrix", **run))
    curves = plot_task_curves(matrix, results / "task_curves.png",
                              title=run_title("score of each task over the sequence", **run))
    environment = {}
    run = read_run_record(results)
    if run:
        environment = dict(run.get("environment", {}))
        environment["global_batch_size"] = run.get("global_batch_size")
        environment["fingerprint"] = run.get("fingerprint")
    report = write_report(results / "report.md", config=resolved.to_dict(), environment=environment,
                          matrix=matrix, summary=summary, images={"heatmap": heatmap, "curves": curves},
                          costs=run.get("costs"))
    return {"heatmap": heatmap, "curves": curves, "report": report}
