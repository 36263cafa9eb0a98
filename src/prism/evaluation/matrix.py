"""The accuracy matrix of a run, its JSON file, and rich tables for the terminal.

The matrix is the result a researcher publishes, so it is saved atomically
(temp file + ``os.replace``): a crash mid-write leaves the previous version,
never a half-written file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from prism.atomic import write_file_atomic
from prism.errors import DataError
from prism.evaluation.cl_metrics import SHORT_NAMES, cl_summary

if TYPE_CHECKING:
    from rich.table import Table

FORMAT = "prism.accuracy_matrix"
FORMAT_VERSION = 1


@dataclass
class AccuracyMatrix:
    """``cells[t][i]``: score on task ``i`` after training task ``t`` (0-100);
    ``None`` where not (yet) evaluated and everywhere above the diagonal."""

    task_names: list[str]
    cells: list[list[float | None]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.task_names)
        if not self.cells:
            self.cells = [[None] * n for _ in range(n)]
        if len(self.cells) != n or any(len(row) != n for row in self.cells):
            raise ValueError(f"cells must be {n} x {n} for {n} task names")

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def _check(self, t: int, i: int) -> None:
        if not (0 <= t < self.n_tasks and 0 <= i < self.n_tasks):
            raise IndexError(f"cell ({t}, {i}) is outside a {self.n_tasks}-task matrix")
        if i > t:
            raise IndexError(f"cell ({t}, {i}) is above the diagonal: task {i} is not trained after task {t}")

    def set(self, t: int, i: int, score: float | None) -> None:
        """Record the score on task ``i`` after training task ``t``."""
        self._check(t, i)
        if score is not None:
            score = float(score)
            if math.isnan(score):
                score = None
        self.cells[t][i] = score

    def get(self, t: int, i: int) -> float | None:
        self._check(t, i)
        return self.cells[t][i]

    def row(self, t: int) -> list[float | None]:
        """Scores on tasks 0..t after training task t."""
        self._check(t, 0)
        return list(self.cells[t][: t + 1])

    def row_complete(self, t: int) -> bool:
        return all(v is not None for v in self.row(t))

    @property
    def rows_done(self) -> int:
        """Number of leading complete rows (tasks whose evaluation is finished)."""
        done = 0
        while done < self.n_tasks and self.row_complete(done):
            done += 1
        return done

    def to_list(self) -> list[list[float | None]]:
        return [list(row) for row in self.cells]

    def summary(self) -> dict[str, Any]:
        """``cl_summary`` of this matrix."""
        return cl_summary(self.cells)

    @classmethod
    def from_cells(cls, task_names: Iterable[str],
                   cells: Mapping[tuple[int, int], float] | Iterable[tuple[int, int, float]],
                   metadata: Mapping[str, Any] | None = None) -> AccuracyMatrix:
        """Build from ``{(t, i): score}`` or ``[(t, i, score), ...]``."""
        matrix = cls(task_names=list(task_names), metadata=dict(metadata or {}))
        items = cells.items() if isinstance(cells, Mapping) else ((c[:2], c[2]) for c in cells)
        for (t, i), score in items:
            matrix.set(int(t), int(i), score)
        return matrix

    # ----------------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "task_names": list(self.task_names),
            "matrix": self.to_list(),
            "metadata": self.metadata,
            "summary": {k: v for k, v in self.summary().items() if k != "labels"},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<accuracy matrix>") -> AccuracyMatrix:
        if data.get("format") != FORMAT:
            raise DataError(f"{source}: not a prism accuracy matrix (format={data.get('format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise DataError(f"{source}: unsupported accuracy-matrix version {data.get('version')!r}")
        try:
            return cls(task_names=[str(n) for n in data["task_names"]],
                       cells=[[None if v is None else float(v) for v in row] for row in data["matrix"]],
                       metadata=dict(data.get("metadata") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: malformed accuracy matrix ({exc})") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON atomically (temp file in the same folder, then ``os.replace``)."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        return write_file_atomic(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AccuracyMatrix:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise DataError(f"cannot read accuracy matrix {p}: {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DataError(f"{p}: not a prism accuracy matrix")
        return cls.from_dict(data, source=str(p))


# --------------------------------------------------------------------------- tables

def format_score(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


SUMMARY_KEYS: tuple[str, ...] = ("last", "mft", "maa", "bwt", "forgetting", "avg_from_learned")


def render_table(matrix: AccuracyMatrix, summary: Mapping[str, Any] | None = None,
                 *, title: str | None = None) -> Table:
    """Rows "after task t", one column per task, CL metrics in the caption beneath."""
    from rich.table import Table

    summary = summary if summary is not None else matrix.summary()
    table = Table(title=title, caption_justify="left")
    table.add_column("after task", style="bold")
    for i, name in enumerate(matrix.task_names):
        table.add_column(f"{i}: {name}", justify="right")
    for t, name in enumerate(matrix.task_names):
        cells = [format_score(v) if i <= t else "" for i, v in enumerate(matrix.cells[t])]
        table.add_row(f"{t}: {name}", *cells)
    parts = [f"{SHORT_NAMES[k]} {format_score(summary.get(k))}" for k in SUMMARY_KEYS]
    caption = "  ".join(parts)
    if summary.get("note"):
        caption += f"\n{summary['note']}"
    table.caption = caption
    return table


def render_comparison(runs: Mapping[str, AccuracyMatrix | Mapping[str, Any]],
                      *, title: str | None = None, costs: Mapping[str, Mapping[str, Any]] | None = None) -> Table:
    """Side-by-side CL metrics: one row per method/run (a matrix or its summary); with ``costs``
    (method -> prism.evaluation.costs.compare_columns) also what each run cost."""
    from rich.table import Table

    from prism.evaluation.costs import format_bytes

    table = Table(title=title)
    table.add_column("method", style="bold")
    for key in ("last", "mft", "maa", "bwt", "forgetting"):
        table.add_column(SHORT_NAMES[key], justify="right")
    table.add_column("tasks", justify="right")
    if costs is not None:
        for header in ("train h", "eval h", "device-h", "peak mem"):
            table.add_column(header, justify="right")
    for name, run in runs.items():
        summary = run.summary() if isinstance(run, AccuracyMatrix) else run
        done = f"{summary.get('rows_present', '?')}/{summary.get('n_tasks', '?')}"
        cells = [format_score(summary.get(k)) for k in ("last", "mft", "maa", "bwt", "forgetting")]
        if costs is not None:
            cost = costs.get(name, {})
            hours = [cost.get(k) for k in ("train_hours", "eval_hours", "device_hours")]
            cells += ["-" if h is None else f"{h:.4f}" for h in hours]
            if cost.get("device_hours") is not None and cost.get("device_type") == "cuda":
                cells[-1] += " GPU"
            cells += [format_bytes(cost.get("peak_memory_bytes"))]
        table.add_row(name, *cells[:5], done, *cells[5:])
    return table
