"""What ``prism data check`` found: problems by kind, per task, with capped examples and a table."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from prism.errors import DataError

if TYPE_CHECKING:
    from rich.console import Console

#: Problem kinds, in the order reports list them, with what they mean.
PROBLEM_KINDS: dict[str, str] = {
    "missing_file": "annotation or ground-truth file (or the image folder) missing",
    "unreadable_file": "annotation file that is not a JSON list",
    "malformed_record": "record that does not have the expected fields",
    "missing_image": "image file not found",
    "corrupt_image": "image file that cannot be decoded",
    "escaping_image": "image path outside the image folder (absolute, .. or a symlink leading out)",
    "manifest_mismatch": "image that differs from the image manifest (size or sha256), or is not in it",
    "duplicate_id": "id (train) or question_id (test) used twice",
    "invalid_gt": "caption ground truth that is not valid COCO",
    "missing_gt": "test record with no caption ground truth",
}


DEFAULT_MAX_EXAMPLES = 10


@dataclass(frozen=True)
class Problem:
    """One thing wrong: its kind, where (task, split, file, record index) and what."""

    kind: str
    task: str
    split: str  # "train", "test", "gt", "images" (the image folder) or "" (the benchmark root)
    file: str
    index: int | None = None
    detail: str = ""

    def line(self) -> str:
        where = f"{self.file}" + (f" record {self.index}" if self.index is not None else "")
        label = f"{self.task} {self.split}".strip()
        return f"{label}: {where}: {self.detail}" if label else f"{where}: {self.detail}"


@dataclass
class TaskCheck:
    """One task's record counts, checked files and problem counts by kind."""

    name: str
    train_records: int = 0
    test_records: int = 0
    files: dict[str, str] = field(default_factory=dict)  # "train" / "test" / "gt" / "images" -> path
    problems: Counter = field(default_factory=Counter)  # kind -> count

    def count(self, *kinds: str) -> int:
        return sum(self.problems.get(kind, 0) for kind in kinds)


#: The report table's problem columns: header -> problem kinds it sums.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "missing\nimages": ("missing_image",),
    "corrupt\nimages": ("corrupt_image",),
    "outside\nroot": ("escaping_image",),
    "manifest\nmismatch": ("manifest_mismatch",),
    "malformed\nrecords": ("malformed_record",),
    "duplicate\nids": ("duplicate_id",),
    "file\nproblems": ("missing_file", "unreadable_file", "invalid_gt"),
    "missing\ngt": ("missing_gt",),
}


_IMAGE_COLUMNS = ("missing\nimages", "corrupt\nimages", "manifest\nmismatch")


@dataclass
class CheckReport:
    """Everything ``check_benchmark`` found; examples are capped per problem kind."""

    benchmark: str
    root: str
    images_checked: bool
    max_examples: int = DEFAULT_MAX_EXAMPLES
    tasks: list[TaskCheck] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[Problem]] = field(default_factory=dict)
    manifest: str | None = None  # the image manifest written by this check, if any
    manifest_images: int = 0  # images this check recorded in it

    @property
    def ok(self) -> bool:
        return self.problem_total == 0

    @property
    def problem_total(self) -> int:
        return sum(self.counts.values())

    def add(self, problem: Problem, task: TaskCheck | None = None) -> None:
        self.counts[problem.kind] += 1
        kept = self.examples.setdefault(problem.kind, [])
        if len(kept) < self.max_examples:
            kept.append(problem)
        if task is not None:
            task.problems[problem.kind] += 1

    def summary(self) -> str:
        """One line: what was checked and what is wrong."""
        records = sum(t.train_records + t.test_records for t in self.tasks)
        what = f"{self.benchmark}: {len(self.tasks)} task(s), {records} record(s)" + \
            ("" if self.images_checked else " (images not checked)")
        if self.ok:
            return f"{what}: no problems"
        parts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in self._ordered_counts())
        return f"{what}: {self.problem_total} problem(s): {parts}"

    def _ordered_counts(self) -> list[tuple[str, int]]:
        order = list(PROBLEM_KINDS)
        return sorted(((k, n) for k, n in self.counts.items() if n),
                      key=lambda item: order.index(item[0]) if item[0] in order else len(order))

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "root": self.root,
            "ok": self.ok,
            "images_checked": self.images_checked,
            "manifest": self.manifest,
            "summary": self.summary(),
            "tasks": [{"name": t.name, "train_records": t.train_records, "test_records": t.test_records,
                       "files": dict(t.files), "problems": dict(t.problems)} for t in self.tasks],
            "problems": {kind: {"count": n, "meaning": PROBLEM_KINDS.get(kind, ""),
                                "examples": [asdict(p) for p in self.examples.get(kind, [])]}
                         for kind, n in self._ordered_counts()},
        }

    def render(self, console: "Console", *, summary: bool = True) -> None:
        """A per-task table, then every problem kind with its (capped) examples, then the summary line."""
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"{self.benchmark} data under {self.root}", title_justify="left",
                      collapse_padding=True)
        table.add_column("task", no_wrap=True, min_width=8)
        for column in ("train\nrecords", "test\nrecords", *TABLE_COLUMNS):
            table.add_column(column, justify="right", no_wrap=True)
        for task in self.tasks:
            cells = []
            for column, kinds in TABLE_COLUMNS.items():
                n = task.count(*kinds)
                unchecked = column in _IMAGE_COLUMNS and not self.images_checked
                cells.append("[dim]-[/]" if unchecked else f"[red]{n}[/]" if n else "[dim]0[/]")
            table.add_row(escape(task.name), str(task.train_records), str(task.test_records), *cells)
        console.print(table)
        for kind, n in self._ordered_counts():
            console.print(f"[bold]{escape(kind)}[/] ({n}): {escape(PROBLEM_KINDS.get(kind, ''))}", highlight=False)
            for problem in self.examples.get(kind, []):
                console.print(f"  - {escape(problem.line())}", highlight=False)
            hidden = n - len(self.examples.get(kind, []))
            if hidden > 0:
                console.print(f"  [dim]... and {hidden} more (--json lists the counts per task)[/]", highlight=False)
        if summary:
            style = "green" if self.ok else "red"
            console.print(f"[{style}]{escape(self.summary())}[/]", highlight=False)


_SKIPPABLE = ("malformed_record", "missing_image", "corrupt_image", "escaping_image")


def check_summary_error(report: CheckReport) -> DataError:
    """The one-line DataError a command raises after printing a report with problems."""
    hint = "fix the files listed above"
    if any(report.counts.get(kind) for kind in _SKIPPABLE):
        hint += '; to train without the bad training records set [benchmark] fix_policy = "skip"'
    return DataError(report.summary(), hint=hint)
