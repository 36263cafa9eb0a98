"""Evaluation: per-task metrics, the accuracy matrix, continual-learning metrics,
plots and the Markdown report.

Nothing here imports torch or transformers: scoring must run on a machine that
only has the prediction files. Import the submodules you need, e.g.
``prism.evaluation.metrics`` or ``prism.evaluation.cl_metrics``.
"""

from __future__ import annotations
