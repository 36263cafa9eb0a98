"""routing_accuracy: how often a routed method sent a test sample to its own task's slot."""

from __future__ import annotations

import json

from prism.evaluation.routing import routed_right, routing_accuracy, routing_of_row


def _line(qid, task, routing):
    return {"question_id": qid, "text": "x", "metadata": {"task": task, "routing": routing}}


def test_the_largest_weight_must_be_on_the_samples_own_task():
    assert routed_right(_line(0, "count", {"colour": 0.2, "count": 0.8})) is True
    assert routed_right(_line(0, "count", {"colour": 0.6, "count": 0.4})) is False
    assert routed_right({"question_id": 0, "metadata": {"task": "count"}}) is None
    assert routed_right(_line(0, "count", {"colour": 0.5, "count": 0.5})) is False  # a tie singles nothing out
    assert routed_right(_line(0, "count", {"count": 1.0})) is True
    lines = [_line(0, "a", {"a": 0.9, "b": 0.1}), _line(1, "a", {"a": 0.1, "b": 0.9}),
             _line(2, "a", {"a": 0.5, "b": 0.4}), {"question_id": 3, "metadata": {"task": "a"}}]
    assert routing_accuracy(lines) == 200 / 3
    assert routing_accuracy([{"question_id": 0, "metadata": {"task": "a"}}]) is None


def test_a_row_of_prediction_files_and_the_run_summary(tmp_path):
    from prism.checkpoint.layout import RunLayout
    from prism.engine.evaluate import add_routing
    from prism.evaluation.matrix import AccuracyMatrix
    from prism.evaluation.report import render_report

    layout = RunLayout(tmp_path, "synthetic", "hide_llava", "llava")
    for index, tasks in ((0, ["a"]), (1, ["a", "b"])):
        folder = layout.predictions(index)
        folder.mkdir(parents=True)
        for task in tasks:
            right = {"a": 0.9, "b": 0.1} if task == "a" else {"a": 0.3, "b": 0.7}
            wrong = {"a": 0.1, "b": 0.9} if task == "a" else {"a": 0.7, "b": 0.3}
            lines = [{"model_id": "m"}, _line(0, task, right), _line(1, task, right), _line(2, task, wrong),
                     _line(3, task, right if index else wrong)]
            (folder / f"{task}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert routing_of_row(layout.predictions(0), ["a", "b"]) == {"a": 50.0}
    matrix = AccuracyMatrix.from_cells(["a", "b"], {(0, 0): 50.0, (1, 0): 40.0, (1, 1): 60.0})
    summary = add_routing(matrix.summary(), layout, [0, 1], ["a", "b"])
    assert summary["routing_accuracy"] == {"a": 75.0, "b": 75.0} and summary["routing_row"] == 1
    report = render_report(matrix, summary=summary)
    assert "## Routing" in report and "| b | 75.00 |" in report
    plain = add_routing(matrix.summary(), RunLayout(tmp_path / "none", "synthetic", "ft_lora", "llava"), [0, 1],
                        ["a", "b"])
    assert "routing_accuracy" not in plain and "## Routing" not in render_report(matrix, summary=plain)
