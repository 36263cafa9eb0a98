"""PNG plots of an accuracy matrix.

Figures are drawn on an explicit Agg canvas (no pyplot), so plotting works on
headless machines and never switches the backend of a user's notebook. Titles name
the run (method, benchmark, backbone) so a plot pasted into a slide still says what
it shows; in the heatmap a cell of a row not evaluated yet is hatched grey and
labelled, while the upper triangle (a task not learned yet: undefined) stays blank.
"""

from __future__ import annotations

import os
from pathlib import Path

from prism.evaluation.matrix import AccuracyMatrix

PathLike = str | os.PathLike[str]


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: PathLike) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", bbox_inches="tight")
    return target


def run_title(kind: str, *, method: str | None = None, benchmark: str | None = None,
              backbone: str | None = None) -> str:
    """``"accuracy matrix — ft_lora on synthetic (llava)"``; the parts given, in that order."""
    if not method and not benchmark:
        return kind
    run = method or "?"
    if benchmark:
        run += f" on {benchmark}"
    if backbone:
        run += f" ({backbone})"
    return f"{kind} — {run}"


def plot_heatmap(matrix: AccuracyMatrix, path: PathLike, *, title: str | None = None) -> Path:
    """Heatmap of a[t][i] (rows: after task t, columns: task i), values written in cells."""
    return _save(heatmap_figure(matrix, title=title), path)


def heatmap_figure(matrix: AccuracyMatrix, *, title: str | None = None):
    """The heatmap as a matplotlib Figure (what ``plot_heatmap`` saves).

    Lower-triangle cells without a score (a row not evaluated yet, or a cell whose
    predictions are missing) are hatched grey with "not run"; the upper triangle is blank.
    """
    import numpy as np
    from matplotlib.patches import Rectangle

    n = matrix.n_tasks
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix.cells], dtype=float)
    figure = _new_figure(1.2 + 0.9 * n, 1.0 + 0.75 * n)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100)
    figure.colorbar(image, ax=axes, label="score")
    axes.set_xticks(range(n), labels=matrix.task_names, rotation=45, ha="right")
    axes.set_yticks(range(n), labels=[f"after {name}" for name in matrix.task_names])
    axes.set_xlabel("evaluated task")
    axes.set_ylabel("trained up to")
    for t in range(n):
        for i in range(t + 1):
            if not np.isnan(values[t, i]):
                colour = "black" if values[t, i] > 60 else "white"
                axes.text(i, t, f"{values[t, i]:.1f}", ha="center", va="center", fontsize=8, color=colour)
            else:
                axes.add_patch(Rectangle((i - 0.5, t - 0.5), 1, 1, facecolor="0.85", edgecolor="0.55",
                                         hatch="//", linewidth=0.5, gid="not-run"))
                axes.text(i, t, "not run", ha="center", va="center", fontsize=7, color="0.3")
    axes.set_title(title or "accuracy matrix")
    return figure


def plot_task_curves(matrix: AccuracyMatrix, path: PathLike, *, title: str | None = None) -> Path:
    """One line per task: its score after each training step from the step it was learned."""
    n = matrix.n_tasks
    figure = _new_figure(max(5.0, 1.0 + 0.9 * n), 4.0)
    axes = figure.add_subplot(1, 1, 1)
    for i, name in enumerate(matrix.task_names):
        steps = [t for t in range(i, n) if matrix.cells[t][i] is not None]
        if steps:
            axes.plot(steps, [matrix.cells[t][i] for t in steps], marker="o", label=name)
    axes.set_xticks(range(n), labels=[f"after {name}" for name in matrix.task_names], rotation=45, ha="right")
    axes.set_ylabel("score")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    if n:
        axes.legend(fontsize=8, loc="best")
    axes.set_title(title or "score of each task over the sequence")
    return _save(figure, path)
