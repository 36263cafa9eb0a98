"""Shared machinery of the file-based (published) benchmarks: UCIT, CoIN, TriGap.

A published benchmark is a fixed task order plus, per task, the folder and file
names its authors and the common reproductions use. Those names differ between
releases (HiDe-LLaVA's ``instructions/VizWiz`` is MCITlib's ``VizWiz`` and the
HiDe scripts' ``VizWiz-caption``), so each slot has an ordered list of accepted
names and the first one found wins. When nothing is found the first (documented)
name is used, and ``prepare`` reports every missing path at once with a hint
about where the data comes from.

Order of the lookup, for each task:

1. ``[benchmark.overrides."<task>"]`` values are used as given.
2. The task folder is the first existing ``<instruction dir>/<folder>`` over the
   benchmark's instruction dirs (outer loop) and the task's folder names.
3. Inside it, each file slot (train, test, caption ground truth) takes the first
   existing accepted name. ``sub_dataset`` turns ``x.json`` into ``x_sub.json``
   (PRISM's rule) for the slots the benchmark publishes subsets of.
4. The image root is the first existing of the benchmark's image dirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

from prism.benchmarks.base import Benchmark, TaskSpec
from prism.errors import ConfigError, DataError
from prism.registry import did_you_mean

if TYPE_CHECKING:
    from prism.config.schema import TaskOverride

SLOTS = ("train", "test", "gt")
_SLOT_WORDS = {"train": "training file", "test": "test file", "gt": "caption ground truth"}
CAPTION_METRIC = "coco_caption"


@dataclass(frozen=True)
class TaskLayout:
    """Where one task's files are looked for, in priority order, and how it is scored."""

    name: str  # the published task name (what users select and see)
    folders: tuple[str, ...]  # accepted task folder names
    train: tuple[str, ...]  # accepted training file names
    test: tuple[str, ...]  # accepted test file names
    metric: str
    max_new_tokens: int
    gt: tuple[str, ...] = ()  # accepted COCO caption ground-truth names (caption tasks)

    def names(self, slot: str) -> tuple[str, ...]:
        return {"train": self.train, "test": self.test, "gt": self.gt}[slot]


@dataclass(frozen=True)
class SlotResolution:
    """One file of a task: the path chosen (relative to root), whether it exists, what else was accepted."""

    slot: str
    path: str
    found: bool
    alternatives: tuple[str, ...] = ()
    overridden: bool = False


@dataclass(frozen=True)
class ResolvedTask:
    """A task's TaskSpec plus how each of its files was found."""

    spec: TaskSpec
    slots: tuple[SlotResolution, ...]
    image_root_found: bool
    image_root_alternatives: tuple[str, ...] = ()

    def missing(self) -> list[SlotResolution]:
        return [slot for slot in self.slots if not slot.found]


def with_sub_suffix(name: str) -> str:
    """``foo.json`` -> ``foo_sub.json``; names already ending in ``_sub.json`` stay (PRISM's rule)."""
    if not name.endswith(".json") or name.endswith("_sub.json"):
        return name
    return name[: -len(".json")] + "_sub.json"


def _join(*parts: str) -> str:
    kept = [p for p in parts if p not in ("", ".")]
    return PurePosixPath(*kept).as_posix() if kept else "."


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


class PublishedBenchmark(Benchmark):
    """A benchmark whose files a user downloads and points ``[benchmark] root`` at."""

    layouts: ClassVar[tuple[TaskLayout, ...]] = ()
    #: Folders under root holding the task folders, in priority order ("" = root itself).
    instruction_dirs: ClassVar[tuple[str, ...]] = ("",)
    #: Folders under root the records' image paths start from, in priority order.
    image_dirs: ClassVar[tuple[str, ...]] = (".",)
    #: Slots that have a published ``_sub`` subset; empty = ``sub_dataset`` is an error.
    sub_slots: ClassVar[tuple[str, ...]] = ()
    #: How to obtain the data (shown when files are missing).
    download_hint: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.layouts:
            cls.tasks = [cls._default_spec(layout) for layout in cls.layouts]

    # -- the task list -------------------------------------------------------------------
    @classmethod
    def task_names(cls) -> list[str]:
        return [layout.name for layout in cls.layouts]

    @classmethod
    def _default_spec(cls, layout: TaskLayout) -> TaskSpec:
        """The documented layout, without looking at any disk (``Benchmark.tasks``)."""
        folder = _join(cls.instruction_dirs[0], layout.folders[0])
        return TaskSpec(
            name=layout.name, train_file=_join(folder, layout.train[0]), test_file=_join(folder, layout.test[0]),
            metric=layout.metric, max_new_tokens=layout.max_new_tokens, image_root=cls.image_dirs[0],
            gt_file=_join(folder, layout.gt[0]) if layout.gt else None,
        )

    def task_specs(self) -> list[TaskSpec]:
        return [resolved.spec for resolved in self.resolve_tasks()]

    def resolve_tasks(self) -> list[ResolvedTask]:
        """Every task's spec, found under root, with overrides and ``sub_dataset`` applied."""
        overrides = self._checked_overrides()
        sub = self._sub_dataset()
        return [self._resolve(layout, overrides.get(layout.name), sub) for layout in self.layouts]

    def _sub_dataset(self) -> bool:
        sub = bool(getattr(self.config, "sub_dataset", False))
        if sub and not self.sub_slots:
            raise ConfigError(
                f"benchmark.sub_dataset: {self.id} has no published subset "
                "(PRISM publishes `_sub` files for UCIT only)",
                hint="set sub_dataset = false and cap the data with max_train_samples / max_test_samples",
            )
        return sub

    def _checked_overrides(self) -> dict[str, "TaskOverride"]:
        given = dict(getattr(self.config, "overrides", None) or {})
        names = self.task_names()
        for task in given:
            if task not in names:
                raise ConfigError(
                    f"benchmark.overrides: {self.id} has no task {task!r}{did_you_mean(task, names)}; "
                    f"its tasks are {', '.join(names)}")
        for task, override in given.items():
            if override.metric is not None:
                self._check_metric(task, override.metric)
        return given

    def _check_metric(self, task: str, metric: str) -> None:
        """An unknown metric would only fail after the first task has trained; fail now."""
        from prism.plugins import registry

        metrics = registry("metric", self.project_dir)
        if metric not in metrics:
            raise ConfigError(
                f"benchmark.overrides.{task}.metric: unknown metric {metric!r}"
                f"{did_you_mean(metric, metrics.ids())}; registered: {', '.join(metrics.ids())}")

    # -- discovery -----------------------------------------------------------------------
    def _exists(self, relative: str, *, folder: bool = False) -> bool:
        path = Path(relative) if Path(relative).is_absolute() else self.root / relative
        return path.is_dir() if folder else path.is_file()

    def _task_folder(self, layout: TaskLayout) -> str:
        """The first existing candidate folder, else the documented one."""
        candidates = _unique([_join(d, f) for d in self.instruction_dirs for f in layout.folders])
        return next((c for c in candidates if self._exists(c, folder=True)), candidates[0])

    def _slot(self, layout: TaskLayout, slot: str, folder: str, sub: bool) -> SlotResolution:
        names = list(layout.names(slot))
        if sub and slot in self.sub_slots:
            names = [with_sub_suffix(n) for n in names]
        paths = _unique([_join(folder, n) for n in names])
        chosen = next((p for p in paths if self._exists(p)), paths[0])
        return SlotResolution(slot, chosen, self._exists(chosen), tuple(p for p in paths if p != chosen))

    def _resolve(self, layout: TaskLayout, override: "TaskOverride | None", sub: bool) -> ResolvedTask:
        folder = self._task_folder(layout)
        slots: dict[str, SlotResolution] = {}
        for slot in SLOTS:
            given = getattr(override, f"{slot}_file", None) if override is not None else None
            if given is not None:
                slots[slot] = SlotResolution(slot, given, self._exists(given), overridden=True)
            elif layout.names(slot):
                slots[slot] = self._slot(layout, slot, folder, sub)
        image_root = override.image_root if override is not None and override.image_root else None
        image_alternatives: tuple[str, ...] = ()
        if image_root is None:
            image_root = next((d for d in self.image_dirs if self._exists(d, folder=True)), self.image_dirs[0])
            image_alternatives = tuple(d for d in self.image_dirs if d != image_root)
        metric = (override.metric if override is not None and override.metric else None) or layout.metric
        tokens = (override.max_new_tokens if override is not None and override.max_new_tokens else None) \
            or layout.max_new_tokens
        gt = slots.get("gt")
        spec = TaskSpec(
            name=layout.name, train_file=slots["train"].path, test_file=slots["test"].path, metric=metric,
            max_new_tokens=tokens, image_root=image_root, gt_file=gt.path if gt is not None else None,
        )
        required = [s for s in slots.values() if s.slot != "gt" or metric == CAPTION_METRIC or s.overridden]
        return ResolvedTask(spec, tuple(required), self._exists(image_root, folder=True), image_alternatives)

    # -- prepare -------------------------------------------------------------------------
    def selected(self, resolved: list[ResolvedTask]) -> list[ResolvedTask]:
        """The tasks ``benchmark.tasks`` selects (all when not set), in benchmark order."""
        from prism.config.selection import task_selection

        chosen = set(task_selection(getattr(self.config, "tasks", None), [r.spec.name for r in resolved]))
        return [r for i, r in enumerate(resolved) if i in chosen]

    def prepare(self) -> Path:
        """Check that root and every selected task's files are there; name all missing paths at once."""
        root = self.root
        if not root.is_dir():
            raise DataError(f"{self.id} data folder not found: {root}", hint=self._hint())
        lines: list[str] = []
        folders: dict[str, list[ResolvedTask]] = {}  # one line per missing image folder, not per task
        for task in self.selected(self.resolve_tasks()):
            lines += [self._missing_line(task.spec.name, slot) for slot in task.missing()]
            if not task.image_root_found:
                folders.setdefault(task.spec.image_root, []).append(task)
        for image_root, tasks in folders.items():
            also = tasks[0].image_root_alternatives
            lines.append(f"image folder {root / image_root}"
                         + (f" (or {', '.join(str(root / a) for a in also)})" if also else "")
                         + f", for {', '.join(t.spec.name for t in tasks)}")
        if lines:
            body = "\n".join(f"  - {line}" for line in dict.fromkeys(lines))
            raise DataError(f"{self.id} data under {root} is incomplete; {len(lines)} expected "
                            f"path(s) are missing:\n{body}", hint=self._hint())
        return root

    def _missing_line(self, task: str, slot: SlotResolution) -> str:
        text = f"{task}: {_SLOT_WORDS[slot.slot]} {self.root / slot.path}"
        if slot.overridden:
            return text + f' (set in [benchmark.overrides."{task}"] {slot.slot}_file)'
        if slot.alternatives:
            return text + f" (also accepted: {', '.join(slot.alternatives)})"
        return text

    def _hint(self) -> str:
        dirs = ", ".join(f"{d}/" if d else "<root>/" for d in self.instruction_dirs)
        images = ", ".join(f"{d}/" for d in self.image_dirs)
        layout = (f"task folders are looked for under {dirs} and images under {images}; "
                  f'[benchmark.overrides."<task>"] sets train_file, test_file, gt_file or image_root by hand')
        return f"{self.download_hint}; {layout}" if self.download_hint else layout

