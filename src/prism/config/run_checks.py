"""The run checks: a configuration against what is installed and on disk.

The schema and a method's ``Params`` check each value on its own; these check what the
values *name*: registered backbone and benchmark ids, the benchmark's tasks
(``[benchmark] tasks``, ``[train.overrides."<task>"]``), trackers, the model and
routing-tower folders, the target-module regex, the data folder. ``prism config validate``
and ``prism train`` both run exactly these (``load_config(check_run=True)``, and
``validate_run`` at the start of every training run), so what validate accepts is what
train starts with. Checks return problems instead of raising, so that one error lists
all of them, each with its TOML key and where the value came from.

Cheap: registries are lazy, benchmark modules are free of torch, and a hub id is looked
up only with ``fetch=True`` (``prism train``, before it touches a file); ``prism config
validate`` downloads nothing and lists such settings as not checked.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from prism.config.paths import project_path, under
from prism.config.problems import KeyPath, config_error, table_key
from prism.errors import ConfigError, DataError
from prism.registry import did_you_mean

__all__ = ["TRACKER_PACKAGES", "run_problems", "task_name_problems", "tracker_problems", "validate_run"]

#: where a value came from ("prism.toml:12", "--set train.lr=abc", "default"), by key path
Where = Callable[[KeyPath], str]

#: tracker name -> the package accelerate needs for it
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}


class _Problems:
    """Collects ``<source>: <key>: <message>`` lines."""

    def __init__(self, where: Where):
        self.where = where
        self.lines: list[str] = []

    def add(self, path: KeyPath, message: str, *, table: bool = False) -> None:
        location = _task_table(path) if table else table_key(path)
        self.lines.append(f"{self.where(path)}: {location}: {message}")

    def error(self, path: KeyPath, exc: ConfigError | DataError) -> None:
        """An error raised by code that names its own key (``[backbone] model = ...: ...``)."""
        text = exc.message + (f"; {exc.hint}" if exc.hint else "")
        self.lines.append(f"{self.where(path)}: {text}")


def _task_table(path: KeyPath) -> str:
    return f'[{".".join(path[:-1])}."{path[-1]}"]'


def validate_run(resolved: Any, *, fetch: bool = False) -> None:
    """Raise one ConfigError listing every problem the run checks find in ``resolved``.

    ``fetch=True`` also looks hub ids up (downloading the model if needed), as
    ``prism train`` does before it removes or writes anything.
    """
    problems = run_problems(resolved.config, resolved.method_params, resolved.project_dir, resolved.where,
                            fetch=fetch)
    problems += _backend_problems(resolved)
    if problems:
        raise config_error(problems)


def run_problems(config: Any, method_params: Any, project_dir: Path, where: Where, *, fetch: bool = False,
                 skip: Iterable[str] = (), unchecked: list[str] | None = None) -> list[str]:
    """Every problem of the run checks. ``skip``: tables that did not validate (their checks
    would only look at defaults); ``unchecked`` receives what could not be checked without a download."""
    skip = set(skip)
    problems = _Problems(where)
    notes = unchecked if unchecked is not None else []
    if "backbone" not in skip:
        _check_backbone(config.backbone, project_dir, fetch, problems, notes)
    if "benchmark" not in skip:
        _check_benchmark(config, project_dir, problems, check_overrides="train" not in skip)
    if "train" not in skip:
        for message in tracker_problems(config.train.report_to):
            problems.add(("train", "report_to"), message)
    if method_params is not None and "method" not in skip:
        _check_target_modules(config.method.id, method_params, problems)
    return problems.lines


def _backend_problems(resolved: Any) -> list[str]:
    """A method that edits gradients cannot run under DeepSpeed (its optimizer steps inside backward)."""
    method_class = getattr(resolved, "method_class", None)
    if resolved.config.distributed.backend != "deepspeed" or not getattr(method_class, "edits_gradients", False):
        return []
    problems = _Problems(resolved.where)
    problems.add(("distributed", "backend"), f"method {resolved.config.method.id!r} edits gradients between "
                 "the backward pass and the optimizer step, which DeepSpeed performs inside its backward; "
                 'use backend = "ddp" (or one process) for this method')
    return problems.lines


# -- ids -----------------------------------------------------------------------------------
def _registered(kind: str, path: KeyPath, value: str, project_dir: Path, problems: _Problems) -> Any:
    """The registry entry of ``value`` (nothing imported yet), or None after reporting an unknown id."""
    from prism.plugins import registry

    known = registry(kind, project_dir)
    if value not in known:
        ids = known.ids()
        problems.add(path, f"unknown {kind} {value!r}{did_you_mean(value, ids)}; registered: "
                           f"{', '.join(ids) or 'none'} (`prism {kind}s list`)")
        return None
    return known.entry(value)


# -- backbone ------------------------------------------------------------------------------
def _check_backbone(backbone: Any, project_dir: Path, fetch: bool, problems: _Problems,
                    unchecked: list[str]) -> None:
    from prism.backbones.llava import resolve_model_path
    from prism.backbones.routing import KEY as TOWER_KEY, resolve_tower_folder

    _registered("backbone", ("backbone", "id"), backbone.id, project_dir, problems)
    for key, value, resolve in (
        ("model", backbone.model, lambda v: resolve_model_path(v, fetch=fetch)),
        ("routing_tower", backbone.routing_tower, lambda v: resolve_tower_folder(v, TOWER_KEY, fetch=fetch)),
    ):
        if not value:
            continue
        try:
            found = resolve(project_path(value, project_dir))
        except ConfigError as exc:
            problems.error(("backbone", key), exc)
            continue
        if found is None:
            unchecked.append(f"[backbone] {key} = {value!r}: a hub id, not looked up (prism train fetches it)")


# -- benchmark and its tasks ---------------------------------------------------------------
_BENCHMARK_KEY = re.compile(r"^(?:benchmark\.(\w+)|\[benchmark\] (\w+))")


def _check_benchmark(config: Any, project_dir: Path, problems: _Problems, *, check_overrides: bool) -> None:
    bench_cfg = config.benchmark
    entry = _registered("benchmark", ("benchmark", "id"), bench_cfg.id, project_dir, problems)
    if entry is None:
        return
    benchmark_cls = entry.load()  # its task list is needed (benchmark modules import no torch)
    root = under(project_dir, bench_cfg.root)
    root_missing = not getattr(benchmark_cls, "creates_data", False) and not root.is_dir()
    if root_missing:
        problems.add(("benchmark", "root"), f"data folder {root} not found: {bench_cfg.id} reads its data "
                                            "from there (`prism data check` lists the files it needs)")
    # a benchmark that cannot list its tasks still has its fixed list (the class's ``tasks``) checked against
    specs = list(getattr(benchmark_cls, "tasks", None) or [])
    try:
        specs = benchmark_cls(bench_cfg, project_dir).task_specs()
    except ConfigError as exc:
        match = _BENCHMARK_KEY.match(exc.message)
        key = next((g for g in match.groups() if g), "id") if match else "id"
        problems.error(("benchmark", key), exc)
    except DataError as exc:  # e.g. a task list read from a manifest under a missing root
        if not root_missing:
            problems.error(("benchmark", "root"), exc)
    if not specs:
        return
    overrides = config.train.overrides if check_overrides else None
    problems.lines += task_name_problems(bench_cfg.id, bench_cfg.tasks, overrides, [s.name for s in specs],
                                         problems.where)


def task_name_problems(benchmark_id: str, tasks: Any, train_overrides: dict[str, Any] | None,
                       names: list[str], where: Where) -> list[str]:
    """``[benchmark] tasks`` and the task names of ``[train.overrides."<task>"]`` against the benchmark's tasks."""
    from prism.config.selection import task_problems

    problems = _Problems(where)
    for message in task_problems(tasks, names)[1]:
        problems.add(("benchmark", "tasks"), message)
    for name in train_overrides or {}:
        if name not in names:
            problems.add(("train", "overrides", name), f"benchmark {benchmark_id!r} has no task {name!r}"
                         f"{did_you_mean(name, names)}; its tasks: {', '.join(names)}", table=True)
    return problems.lines


# -- train -----------------------------------------------------------------------------------
def tracker_problems(names: list[str]) -> list[str]:
    """``[train] report_to``: unknown trackers, and trackers whose package is not installed."""
    problems = []
    for name in names:
        package = TRACKER_PACKAGES.get(name)
        if package is None:
            problems.append(f"unknown tracker {name!r}{did_you_mean(name, TRACKER_PACKAGES)}; "
                            f"choose from {', '.join(sorted(TRACKER_PACKAGES))}")
        elif importlib.util.find_spec(package) is None:
            problems.append(f"{name!r} needs the {package} package (pip install {package}, "
                            f"or remove {name!r} from report_to)")
    return problems


# -- method ----------------------------------------------------------------------------------
def _check_target_modules(method_id: str, params: Any, problems: _Problems) -> None:
    """A target-module regex that does not compile would fail only when adapters are injected."""
    from prism.backbones.base import TARGET_PRESETS

    value = getattr(params, "target_modules", None)
    if not isinstance(value, str):
        return
    try:
        re.compile(TARGET_PRESETS.get(value, value))
    except re.error as exc:
        problems.add(("method", method_id, "target_modules"),
                     f"{value!r} is neither a preset ({', '.join(TARGET_PRESETS)}) nor a valid "
                     f"regular expression ({exc})")
