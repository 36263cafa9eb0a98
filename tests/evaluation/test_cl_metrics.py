"""CL metrics on hand-computed matrices, including benchmarks.md's 6x6 check."""

from __future__ import annotations

import math

import pytest

from prism.evaluation import cl_metrics as cl

# a[t][i]; None above the diagonal.
M3 = [
    [80.0, None, None],
    [85.0, 90.0, None],
    [60.0, 85.0, 75.0],
]


def test_three_tasks_by_hand():
    assert cl.last(M3) == pytest.approx((60 + 85 + 75) / 3)
    assert cl.mfn(M3) == cl.last(M3)
    assert cl.mft(M3) == pytest.approx((80 + 90 + 75) / 3)
    assert cl.maa(M3) == pytest.approx((80 + (85 + 90) / 2 + (60 + 85 + 75) / 3) / 3)
    assert cl.bwt(M3) == pytest.approx(((60 - 80) + (85 - 90)) / 2)  # -12.5
    # task 0: best before the end is 85 (after task 1), not the diagonal 80.
    assert cl.forgetting(M3) == pytest.approx(((85 - 60) + (90 - 85)) / 2)  # 15
    assert cl.avg_maa(M3) == cl.maa(M3)
    assert cl.avg_from_learned(M3) == pytest.approx(((80 + 85 + 60) / 3 + (90 + 85) / 2 + 75) / 3)


def test_six_by_six_check_from_benchmarks_md():
    final = [86.67, 94.00, 58.71, 79.03, 64.33, 58.20]
    diagonal = [91.73, 94.23, 61.37, 86.00, 79.70, 58.20]
    matrix = [[math.nan] * 6 for _ in range(6)]
    for t in range(6):
        for i in range(t + 1):
            matrix[t][i] = diagonal[i] if i == t else (final[i] + diagonal[i]) / 2
    matrix[5] = list(final)
    summary = cl.cl_summary(matrix)
    assert round(summary["last"], 2) == 73.49
    assert round(summary["mfn"], 2) == 73.49
    assert round(summary["mft"], 2) == 78.54
    assert round(summary["bwt"], 2) == -6.06
    assert summary["complete"] is True and summary["note"] is None


def test_numpy_input_with_nan_above_diagonal():
    np = pytest.importorskip("numpy")
    array = np.array([[v if v is not None else np.nan for v in row] for row in M3])
    assert cl.cl_summary(array)["bwt"] == pytest.approx(-12.5)


def test_single_task():
    summary = cl.cl_summary([[50.0]])
    assert summary["last"] == summary["mft"] == summary["maa"] == 50.0
    assert summary["bwt"] is None and summary["forgetting"] is None
    assert "undefined" in summary["note"]


def test_partial_run_uses_rows_present():
    partial = [row[:] for row in M3]
    partial[2] = [None, None, None]  # stopped after task 1
    summary = cl.cl_summary(partial)
    assert summary["rows_present"] == 2 and summary["n_tasks"] == 3
    assert summary["complete"] is False
    assert summary["last"] == pytest.approx((85 + 90) / 2)
    assert summary["bwt"] == pytest.approx(85 - 80)
    assert "partial run" in summary["note"]


def test_half_filled_row_is_not_used():
    partial = [row[:] for row in M3]
    partial[2] = [60.0, None, None]  # evaluation of step 2 still running
    assert cl.cl_summary(partial)["rows_present"] == 2


def test_empty_matrix():
    summary = cl.cl_summary([])
    assert summary["last"] is None and summary["rows_present"] == 0
    with pytest.raises(ValueError):
        cl.last([])


def test_labels_name_both_avg_readings():
    labels = cl.cl_summary(M3)["labels"]
    assert "MAA" in labels["avg_maa"] and "learned" in labels["avg_from_learned"]
