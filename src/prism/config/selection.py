"""``benchmark.tasks``: which tasks of a benchmark a run trains on, in order.

A selection is None/"all", a range "0-4", a list "0,2,3", an index, or names;
every problem of one selection is reported together.
"""

from __future__ import annotations

import re

from prism.errors import ConfigError
from prism.registry import did_you_mean

__all__ = ["TaskSpec", "task_problems", "task_selection"]

#: What ``benchmark.tasks`` accepts: None/"all", "0-4", "0,2,3", 3, [0, 2], names.
TaskSpec = str | int | list[int | str] | None


_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def task_selection(spec: TaskSpec, task_names: list[str]) -> list[int]:
    """Indices of the tasks ``spec`` selects, in the order given.

    The order is kept (a continual-learning run may use a custom task order);
    a task listed twice is an error because it would train twice. Every
    problem of the selection is named in the one ConfigError.
    """
    chosen, problems = task_problems(spec, task_names)
    if problems:
        raise ConfigError("benchmark.tasks: " + "; ".join(problems))
    return chosen


def task_problems(spec: TaskSpec, task_names: list[str]) -> tuple[list[int], list[str]]:
    """(the indices ``spec`` selects, what is wrong with it): every problem, not just the first."""
    count = len(task_names)
    if count == 0:
        return [], ["the benchmark has no tasks"]
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return list(range(count)), []
    items: list[int | str]
    if isinstance(spec, bool):
        return [], [f"expected indices, a range or names, got {spec!r}"]
    if isinstance(spec, int):
        items = [spec]
    elif isinstance(spec, str):
        items = [part.strip() for part in spec.split(",")]
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        return [], [f"expected indices, a range or names, got {spec!r}"]

    chosen: list[int] = []
    problems: list[str] = []
    for item in items:
        try:
            indices = _resolve_item(item, task_names)
        except ConfigError as exc:
            problems.append(exc.message.removeprefix("benchmark.tasks: "))
            continue
        for index in indices:
            if index in chosen:
                problems.append(f"task {index} ({task_names[index]}) is listed twice")
            else:
                chosen.append(index)
    if not chosen and not problems:
        problems.append("selects no task")
    if any(p.startswith(("unknown task", "task index")) for p in problems):
        problems[-1] += f"; the benchmark has {count} tasks: 0-{count - 1} ({', '.join(task_names)})"
    return chosen, problems


def _resolve_item(item: int | str, task_names: list[str]) -> list[int]:
    """The indices one entry of a selection names; a ConfigError says why it names none."""
    count = len(task_names)
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise ConfigError(f"benchmark.tasks: {item!r} is not a task index or name")
    if isinstance(item, str):
        text = item.strip()
        if not text:
            raise ConfigError("benchmark.tasks: empty entry (a stray comma?)")
        match = _RANGE.match(text)
        if match:
            start, stop = int(match.group(1)), int(match.group(2))
            if start > stop:
                raise ConfigError(f"benchmark.tasks: range {text!r} goes backwards")
            for index in (start, stop):
                _check_index(index, count)
            return list(range(start, stop + 1))
        if text.lstrip("-").isdigit():
            item = int(text)
        elif text in task_names:
            return [task_names.index(text)]
        else:
            lowered = [name.lower() for name in task_names]
            if text.lower() in lowered:
                return [lowered.index(text.lower())]
            raise ConfigError(f"benchmark.tasks: unknown task {text!r}{did_you_mean(text, task_names)}")
    _check_index(item, count)
    return [item]


def _check_index(index: int, count: int) -> None:
    if not 0 <= index < count:
        raise ConfigError(f"benchmark.tasks: task index {index} is out of range")
