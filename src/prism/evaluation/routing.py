"""How often a routed method picked each sample's own task (``routing_accuracy``).

A method that weights task slots per sample records, on every prediction line,
``metadata.routing``: task name -> weight. A sample is routed right when its
largest weight is on the slot of the task it comes from (``metadata.task``) alone: a tie for the
largest weight is not a right route (the router did not single the task out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping


def routed_right(line: Mapping[str, Any]) -> bool | None:
    """Whether the line's largest routing weight is on its own task (None: the line has no routing)."""
    metadata = line.get("metadata") or {}
    routing = metadata.get("routing")
    if not routing:
        return None
    top = max(routing.values())
    best = [name for name, weight in routing.items() if weight == top]
    return best == [metadata.get("task")]


def routing_accuracy(lines: Iterable[Mapping[str, Any]]) -> float | None:
    """Percentage of routed lines sent to their own task's slot (None when no line is routed)."""
    verdicts = [v for v in (routed_right(line) for line in lines) if v is not None]
    if not verdicts:
        return None
    return 100.0 * sum(verdicts) / len(verdicts)


def routing_of_row(folder: Path, task_names: Iterable[str]) -> dict[str, float]:
    """Per task, the routing accuracy of the predictions in one checkpoint's folder (routed tasks only)."""
    result: dict[str, float] = {}
    for name in task_names:
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            continue
        lines = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines() if text.strip()]
        value = routing_accuracy(line for line in lines if "question_id" in line)
        if value is not None:
            result[name] = value
    return result
