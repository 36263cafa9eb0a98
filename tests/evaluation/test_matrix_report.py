"""Accuracy matrix JSON, rich tables, plots and the Markdown report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from prism.errors import DataError
from prism.evaluation.matrix import AccuracyMatrix, render_comparison, render_table
from prism.evaluation.plots import heatmap_figure, plot_heatmap, plot_task_curves, run_title
from prism.evaluation.report import render_report, write_report

NAMES = ["colour", "choice", "caption"]


def make() -> AccuracyMatrix:
    return AccuracyMatrix.from_cells(
        NAMES, {(0, 0): 80.0, (1, 0): 85.0, (1, 1): 90.0, (2, 0): 60.0, (2, 1): 85.0, (2, 2): 75.0},
        metadata={"method": "ft_lora"},
    )


def text_of(table) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_set_row_and_bounds():
    m = AccuracyMatrix(task_names=NAMES)
    m.set(0, 0, 50)
    assert m.row(0) == [50.0] and m.row(1) == [None, None]
    assert m.rows_done == 1
    with pytest.raises(IndexError):
        m.set(0, 1, 1.0)  # above the diagonal
    with pytest.raises(IndexError):
        m.set(3, 0, 1.0)


def test_from_cells_triples_and_summary():
    m = AccuracyMatrix.from_cells(["a", "b"], [(0, 0, 10.0), (1, 0, 20.0), (1, 1, 30.0)])
    assert m.summary()["last"] == 25.0
    assert m.rows_done == 2


def test_json_round_trip_is_atomic(tmp_path):
    m = make()
    path = m.save(tmp_path / "sub" / "matrix.json")
    assert [p.name for p in path.parent.iterdir()] == ["matrix.json"]  # no temp file left
    loaded = AccuracyMatrix.load(path)
    assert loaded == m
    data = json.loads(path.read_text())
    assert data["matrix"][0][1] is None
    assert data["summary"]["bwt"] == pytest.approx(-12.5)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"format": "something"}')
    with pytest.raises(DataError, match="not a prism accuracy matrix"):
        AccuracyMatrix.load(path)


def test_render_table_and_comparison():
    m = make()
    text = text_of(render_table(m, m.summary(), title="run"))
    assert "0: colour" in text and "85.00" in text and "Last/MFN 73.33" in text and "BWT -12.50" in text
    partial = AccuracyMatrix.from_cells(NAMES, {(0, 0): 70.0})
    text = text_of(render_comparison({"ft_lora": m, "replay": partial.summary()}))
    assert "ft_lora" in text and "replay" in text and "3/3" in text and "1/3" in text


def test_plots_and_report(tmp_path):
    m = make()
    heat = plot_heatmap(m, tmp_path / "plots" / "heatmap.png")
    curves = plot_task_curves(m, tmp_path / "plots" / "curves.png")
    for png in (heat, curves):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = write_report(
        tmp_path / "report.md", m,
        config={"method": "ft_lora", "benchmark": "synthetic"},
        environment={"python": "3.11", "torch": "2.x"},
        images={"accuracy matrix": heat, "task curves": curves},
    )
    text = report.read_text()
    assert "| after task | colour | choice | caption |" in text
    assert "| 2: caption | 60.00 | 85.00 | 75.00 |" in text
    assert "| 0: colour | 80.00 |  |  |" in text
    assert "Avg (from learned)" in text and "Avg (MAA)" in text
    assert "![accuracy matrix](plots/heatmap.png)" in text
    assert "| method | ft_lora |" in text and "| python | 3.11 |" in text


def test_heatmap_names_the_run_and_marks_rows_not_run():
    m = AccuracyMatrix(["a", "b", "c"])
    m.set(0, 0, 90.0)
    m.set(1, 0, 50.0)
    m.set(1, 1, 80.0)  # row 2 (after c) not evaluated yet
    title = run_title("accuracy matrix", method="ft_lora", benchmark="synthetic", backbone="llava")
    assert title == "accuracy matrix — ft_lora on synthetic (llava)"
    axes = heatmap_figure(m, title=title).axes[0]
    assert axes.get_title() == title
    marked = sorted((round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in axes.patches
                    if p.get_gid() == "not-run")
    assert marked == [(0, 2), (1, 2), (2, 2)]  # (column, row): the untrained row, not the upper triangle
    assert [t.get_text() for t in axes.texts].count("not run") == 3


def test_artifacts_title_plots_with_the_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import prism.evaluation.plots as plots
    from prism.engine.rescore import write_artifacts

    titles = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: titles.append(figure.axes[0].get_title()) or Path(path))
    monkeypatch.setattr("prism.evaluation.report.write_report", lambda path, **kw: Path(path))
    layout = SimpleNamespace(results_dir=tmp_path, method="olora", benchmark="ucit", backbone="internvl")
    m = AccuracyMatrix(["a"])
    m.set(0, 0, 1.0)
    write_artifacts(SimpleNamespace(to_dict=dict), layout, m, m.summary())
    assert titles and all("olora on ucit (internvl)" in t for t in titles)


def test_report_mentions_partial_run():
    m = AccuracyMatrix.from_cells(NAMES, {(0, 0): 70.0})
    assert "partial run" in render_report(m)
