"""A Markdown report of a run: what was run, where, the matrix, the CL metrics
with their definitions, and the plots. Written so that a reader can check a
number without opening any other file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from prism.atomic import write_file_atomic
from prism.evaluation.costs import cost_markdown
from prism.evaluation.cl_metrics import LABELS, SHORT_NAMES
from prism.evaluation.matrix import AccuracyMatrix, format_score

PathLike = str | os.PathLike[str]

_REPORT_KEYS = ("last", "mft", "maa", "bwt", "forgetting", "avg_maa", "avg_from_learned")


def _escape(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _key_value_table(data: Mapping[str, Any], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_escape(k)} | {_escape(v)} |" for k, v in data.items()]
    return lines


def matrix_markdown(matrix: AccuracyMatrix) -> str:
    """The matrix as a Markdown table; rows "after task t", blank above the diagonal."""
    header = "| after task | " + " | ".join(_escape(n) for n in matrix.task_names) + " |"
    lines = [header, "|---|" + "---:|" * matrix.n_tasks]
    for t, name in enumerate(matrix.task_names):
        cells = [format_score(v) if i <= t else "" for i, v in enumerate(matrix.cells[t])]
        lines.append(f"| {t}: {_escape(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(matrix: AccuracyMatrix, *, summary: Mapping[str, Any] | None = None,
                  config: Mapping[str, Any] | None = None,
                  environment: Mapping[str, Any] | None = None,
                  images: Mapping[str, PathLike] | None = None,
                  title: str = "prism run report", base_dir: PathLike | None = None,
                  costs: Mapping[str, Any] | None = None) -> str:
    """The report as Markdown text. ``images`` maps a caption to a PNG path;
    links are made relative to ``base_dir`` (the report's folder) when given."""
    summary = summary if summary is not None else matrix.summary()
    out: list[str] = [f"# {title}", ""]
    if config:
        out += ["## Configuration", "", *_key_value_table(config, ("setting", "value")), ""]
    if environment:
        out += ["## Environment", "", *_key_value_table(environment, ("item", "value")), ""]
    out += ["## Accuracy matrix", "",
            "a[t][i] = score on task i after training task t (0-100).", "",
            matrix_markdown(matrix), ""]
    out += ["## Continual-learning metrics", "", "| metric | value | definition |", "|---|---:|---|"]
    for key in _REPORT_KEYS:
        out.append(f"| {SHORT_NAMES[key]} | {format_score(summary.get(key))} | {_escape(LABELS[key])} |")
    out.append("")
    if summary.get("note"):
        out += [f"> {summary['note']}", ""]
    if summary.get("task_oracle"):
        out += ["> Task oracle: methods were told each test sample's true task (`[infer] task_oracle`); "
                "these scores are not those of a model that must recognise the task itself.", ""]
    if summary.get("routing_accuracy"):
        out += ["## Routing", "",
                "Share of test samples whose largest routing weight is on their own task's slot "
                f"(after training task {summary.get('routing_row', '?')}).", "",
                "| task | routing accuracy |", "|---|---:|"]
        out += [f"| {_escape(name)} | {format_score(value)} |" for name, value in summary["routing_accuracy"].items()]
        out.append("")
    if costs:
        out += cost_markdown(costs)
    if images:
        out += ["## Plots", ""]
        for caption, path in images.items():
            link = Path(path)
            if base_dir is not None:
                link = Path(os.path.relpath(Path(path).resolve(), Path(base_dir).resolve()))
            out += [f"![{_escape(caption)}]({link.as_posix()})", ""]
    return "\n".join(out).rstrip() + "\n"


def write_report(path: PathLike, matrix: AccuracyMatrix, *, summary: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None, environment: Mapping[str, Any] | None = None,
                 images: Mapping[str, PathLike] | None = None,
                 title: str = "prism run report", costs: Mapping[str, Any] | None = None) -> Path:
    """Write the Markdown report to ``path`` (image links relative to its folder)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(matrix, summary=summary, config=config, environment=environment,
                         images=images, title=title, base_dir=target.parent, costs=costs)
    return write_file_atomic(target, text)
