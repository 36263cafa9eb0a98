"""Continual-learning summary metrics over the accuracy matrix.

``a[t][i]`` is the score on task i after training task t: lower-triangular,
T x T, with ``None`` or NaN above the diagonal. Definitions follow MCITlib (see
``reference/benchmarks.md``). A run that stopped early has fewer complete rows;
every metric is then computed over the leading square of complete rows (the run
"as if" it had T = rows present) and ``cl_summary`` says so.

"Avg" is ambiguous in the HiDe-LLaVA/UCIT papers, so both readings are given
and labelled: ``avg_maa`` (= MAA) and ``avg_from_learned``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

Matrix = Sequence[Sequence[float | None]] | Any  # list of lists or a numpy array

LABELS: dict[str, str] = {
    "last": "Last (= MFN): mean of the final row",
    "mfn": "MFN (= Last): mean final accuracy over all tasks",
    "mft": "MFT: mean of the diagonal, accuracy right after learning each task (plasticity)",
    "maa": "MAA: mean over steps t of the mean accuracy on tasks 0..t",
    "bwt": "BWT: mean over i < T-1 of a[T-1][i] - a[i][i] (negative = forgetting)",
    "forgetting": "Forgetting: mean over i < T-1 of max_{t<T-1} a[t][i] - a[T-1][i]",
    "avg_maa": "Avg (MAA reading): mean over steps of the mean accuracy on seen tasks",
    "avg_from_learned": "Avg (from-learned reading): mean over tasks of the mean of "
                        "a[t][i] from t = i (when learned) to the final step",
}

SHORT_NAMES: dict[str, str] = {
    "last": "Last/MFN", "mfn": "MFN", "mft": "MFT", "maa": "MAA", "bwt": "BWT",
    "forgetting": "Forgetting", "avg_maa": "Avg (MAA)", "avg_from_learned": "Avg (from learned)",
}


def _cell(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def to_rows(matrix: Matrix) -> list[list[float | None]]:
    """The matrix as lists of floats with ``None`` for missing cells."""
    if hasattr(matrix, "tolist"):
        matrix = matrix.tolist()
    return [[_cell(v) for v in row] for row in matrix]


def complete_rows(matrix: Matrix) -> list[list[float]]:
    """The leading rows 0..k whose cells 0..t are all present, cut to the
    lower triangle: row t has t + 1 values. Stops at the first incomplete row."""
    rows: list[list[float]] = []
    for t, row in enumerate(to_rows(matrix)):
        lower = row[: t + 1]
        if len(lower) < t + 1 or any(v is None for v in lower):
            break
        rows.append([float(v) for v in lower])  # type: ignore[arg-type]
    return rows


def _rows_or_raise(matrix: Matrix) -> list[list[float]]:
    rows = complete_rows(matrix)
    if not rows:
        raise ValueError("the accuracy matrix has no complete row (a[0][0] is missing)")
    return rows


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items)


def last(matrix: Matrix) -> float:
    """Last = MFN: mean of the final (complete) row."""
    return _mean(_rows_or_raise(matrix)[-1])


mfn = last


def mft(matrix: Matrix) -> float:
    """Mean of the diagonal: each task right after it was learned."""
    rows = _rows_or_raise(matrix)
    return _mean(rows[t][t] for t in range(len(rows)))


def maa(matrix: Matrix) -> float:
    """Mean over steps t of the mean accuracy on tasks 0..t."""
    return _mean(_mean(row) for row in _rows_or_raise(matrix))


def bwt(matrix: Matrix) -> float | None:
    """Mean over i < T-1 of a[T-1][i] - a[i][i]; ``None`` when T = 1."""
    rows = _rows_or_raise(matrix)
    final = rows[-1]
    if len(rows) < 2:
        return None
    return _mean(final[i] - rows[i][i] for i in range(len(rows) - 1))


def forgetting(matrix: Matrix) -> float | None:
    """Mean over i < T-1 of the drop from the best earlier score to the final one;
    ``None`` when T = 1."""
    rows = _rows_or_raise(matrix)
    final = rows[-1]
    if len(rows) < 2:
        return None
    k = len(rows) - 1
    return _mean(max(rows[t][i] for t in range(i, k)) - final[i] for i in range(k))


def avg_maa(matrix: Matrix) -> float:
    """"Avg" read as MAA."""
    return maa(matrix)


def avg_from_learned(matrix: Matrix) -> float:
    """"Avg" read as: for each task, the mean of its scores from the step it was
    learned to the final step; then the mean over tasks."""
    rows = _rows_or_raise(matrix)
    k = len(rows) - 1
    return _mean(_mean(rows[t][i] for t in range(i, k + 1)) for i in range(k + 1))


def cl_summary(matrix: Matrix) -> dict[str, Any]:
    """All CL metrics with labels and completeness.

    Keys: the metric values (``last``, ``mfn``, ``mft``, ``maa``, ``bwt``,
    ``forgetting``, ``avg_maa``, ``avg_from_learned``; ``None`` when undefined),
    ``n_tasks`` (matrix size), ``rows_present`` (complete rows used),
    ``complete`` (bool), ``note`` (why something is partial or undefined, or
    ``None``) and ``labels`` (metric -> description).
    """
    all_rows = to_rows(matrix)
    n_tasks = max([len(all_rows)] + [len(r) for r in all_rows]) if all_rows else 0
    rows = complete_rows(all_rows)
    summary: dict[str, Any] = {key: None for key in LABELS}
    summary.update(n_tasks=n_tasks, rows_present=len(rows),
                   complete=n_tasks > 0 and len(rows) == n_tasks, note=None, labels=dict(LABELS))
    notes = []
    if rows:
        summary.update(
            last=last(rows), mfn=last(rows), mft=mft(rows), maa=maa(rows), bwt=bwt(rows),
            forgetting=forgetting(rows), avg_maa=avg_maa(rows), avg_from_learned=avg_from_learned(rows),
        )
    if not rows:
        notes.append("no complete row yet: nothing to summarise")
    elif len(rows) < n_tasks:
        notes.append(
            f"partial run: computed over the {len(rows)} complete row(s) "
            f"(tasks 0..{len(rows) - 1} of {n_tasks}); the final row is row {len(rows) - 1}"
        )
    if len(rows) == 1:
        notes.append("BWT and forgetting are undefined with a single task")
    summary["note"] = "; ".join(notes) or None
    return summary
