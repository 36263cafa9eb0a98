"""jsonseq: a task sequence described by a manifest file, over data in prism's standard formats.

``[benchmark] root`` is a folder holding ``tasks.toml`` (or ``tasks.json``)::

    # optional: where the task files are, relative to this folder (default: this folder)
    data_root = "../shapes"

    [[tasks]]
    name = "count"                    # what --tasks selects and the matrix shows
    train_file = "count/train.json"   # LLaVA conversation JSON, relative to data_root
    test_file = "count/test.json"     # test JSON: question_id, image, text, answer
    image_root = "count"              # the records' image paths start here (default ".")
    metric = "exact_match"            # any registered metric (`prism metrics list`)
    max_new_tokens = 8                # optional (default 16)
    # gt_file = "caption/gt.json"     # COCO caption ground truth, for caption metrics

The order of ``[[tasks]]`` is the order they are learned. The files are read by
prism's own loaders (``prism.benchmarks.data``), so ``prism data check`` validates
them and every format rule of the built-in benchmarks holds here too.

Reading the manifest needs no torch: shell completion lists its task names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prism.benchmarks.base import Benchmark, TaskSpec
from prism.errors import ConfigError, DataError
from prism.registry import did_you_mean

MANIFEST_NAMES = ("tasks.toml", "tasks.json")
TASK_KEYS = ("name", "train_file", "test_file", "metric", "max_new_tokens", "image_root", "gt_file")
REQUIRED_KEYS = ("name", "train_file", "test_file", "metric")
TOP_KEYS = ("data_root", "tasks", "description")


def find_manifest(folder: Path) -> Path:
    for name in MANIFEST_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"jsonseq: no {' or '.join(MANIFEST_NAMES)} in {folder}",
                    hint="set [benchmark] root to the folder holding the task manifest")


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest; syntax errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read task manifest {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a table with a 'tasks' list")
    return data


def parse_tasks(data: dict[str, Any], where: Path) -> list[TaskSpec]:
    """TaskSpecs from a manifest; every problem is reported at once, naming task and key."""
    problems: list[str] = []
    for key in data:
        if key not in TOP_KEYS:
            problems.append(f"unknown key {key!r}{did_you_mean(key, TOP_KEYS)}")
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        problems.append("'tasks' must be a non-empty list of tables ([[tasks]] in TOML)")
        tasks = []
    specs: list[TaskSpec] = []
    seen: set[str] = set()
    for i, task in enumerate(tasks):
        label = f"tasks[{i}]" + (f" ({task.get('name')})" if isinstance(task, dict) and task.get("name") else "")
        if not isinstance(task, dict):
            problems.append(f"{label}: expected a table")
            continue
        before = len(problems)
        bad = [k for k in task if k not in TASK_KEYS]
        problems += [f"{label}: unknown key {k!r}{did_you_mean(k, TASK_KEYS)}" for k in bad]
        missing = [k for k in REQUIRED_KEYS if not isinstance(task.get(k), str) or not task.get(k)]
        problems += [f"{label}: {k!r} is required (a non-empty string)" for k in missing]
        tokens = task.get("max_new_tokens", 16)
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            problems.append(f"{label}: 'max_new_tokens' must be an integer >= 1, got {tokens!r}")
        if len(problems) > before:
            continue
        if task["name"] in seen:
            problems.append(f"{label}: task name {task['name']!r} is used twice")
            continue
        seen.add(task["name"])
        specs.append(TaskSpec(name=task["name"], train_file=task["train_file"], test_file=task["test_file"],
                              metric=task["metric"], max_new_tokens=tokens,
                              image_root=task.get("image_root", "."), gt_file=task.get("gt_file")))
    if problems:
        body = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"task manifest {where} has {len(problems)} problem(s):\n{body}",
                          hint="see `pip show prism-jsonbench` / the plugin README for the manifest format")
    return specs


class JsonSequence(Benchmark):
    """A benchmark defined by ``tasks.toml``/``tasks.json`` under ``[benchmark] root``."""

    id = "jsonseq"
    tasks: list[TaskSpec] = []  # known only from the manifest: see task_specs()

    @property
    def manifest_path(self) -> Path:
        return find_manifest(super().root)

    def _manifest(self) -> dict[str, Any]:
        if getattr(self.config, "overrides", None):
            raise ConfigError("[benchmark] overrides do not apply to jsonseq",
                              hint="edit the task manifest instead: it already names every file")
        return read_manifest(self.manifest_path)

    @property
    def root(self) -> Path:
        """The data root: the manifest's ``data_root`` (relative to its folder), else its folder."""
        folder = super().root
        data_root = self._manifest().get("data_root")
        if data_root is None:
            return folder
        if not isinstance(data_root, str) or not data_root:
            raise ConfigError(f"{self.manifest_path}: 'data_root' must be a non-empty string")
        path = Path(data_root).expanduser()
        return path if path.is_absolute() else (folder / path).resolve()

    def task_specs(self) -> list[TaskSpec]:
        return parse_tasks(self._manifest(), self.manifest_path)

    def prepare(self) -> Path:
        """Check every selected task's files and metric before any training starts."""
        from prism.config import task_selection
        from prism.plugins import registry

        root = self.root
        specs = self.task_specs()
        chosen = task_selection(getattr(self.config, "tasks", None), [s.name for s in specs])
        metrics = registry("metric", self.project_dir)
        problems: list[str] = []
        for spec in (specs[i] for i in chosen):
            if spec.metric not in metrics:
                problems.append(f"{spec.name}: unknown metric {spec.metric!r}"
                                f"{did_you_mean(spec.metric, metrics.ids())}")
            files = [("training file", spec.train_file), ("test file", spec.test_file)]
            if spec.gt_file:
                files.append(("caption ground truth", spec.gt_file))
            problems += [f"{spec.name}: {what} {root / rel} is missing" for what, rel in files
                         if not (root / rel).is_file()]
            if not (root / spec.image_root).is_dir():
                problems.append(f"{spec.name}: image folder {root / spec.image_root} is missing")
        if problems:
            body = "\n".join(f"  - {p}" for p in problems)
            raise DataError(f"jsonseq data under {root} is incomplete:\n{body}",
                            hint=f"paths are relative to the data root; fix {self.manifest_path}")
        return root
