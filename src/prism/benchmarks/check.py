"""Validate a benchmark's data as a whole, and load training data under a fix policy.

Loading (``prism.benchmarks.data``) stops at the first bad record, which is
right for a run but slow for repairing a download: a user would fix one record
per attempt. ``check_benchmark`` reads everything and collects every problem
(malformed records, missing / corrupt / escaping images, duplicate ids, caption
ground truth that does not cover the test set) into one ``CheckReport``.

``load_train_records_checked`` is what a run uses: under ``fix_policy = "error"``
the first bad record stops it (file and record index named), under ``"skip"``
bad records are dropped with one warning line, so a few broken images in a
40k-sample task do not cost a whole run.

When the benchmark root holds an image manifest (``prism_images.sha256``, see
``prism.benchmarks.image_manifest``), the check compares every image with it;
``check_benchmark(..., write_manifest=True)`` records the images instead and
writes the manifest when the check finds no problem.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prism.benchmarks.base import Benchmark, TaskSpec
from prism.benchmarks.data import (
    decode_failure,
    load_train_records,
    resolve_image,
    validate_test_record,
    validate_train_record,
)
from prism.benchmarks.image_manifest import (
    ImageEntry,
    ImageManifest,
    ImageVerifier,
    entry_of,
    image_key,
    verifier_for,
)
from prism.errors import ConfigError, DataError
from prism.evaluation.caption_match import CaptionMatcher
from prism.jsonfile import JsonProblem, read_json

if TYPE_CHECKING:
    from rich.console import Console

FixPolicy = Literal["error", "skip"]
FIX_POLICIES: tuple[str, ...] = ("error", "skip")

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
#: How many reasons the one-line skip warning quotes.
WARN_REASONS = 3

ProgressFn = Callable[[str, int, int], None]


class SkippedRecordsWarning(UserWarning):
    """Training records were dropped under ``fix_policy = "skip"``."""


# -- results -----------------------------------------------------------------------------
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


# -- reading -----------------------------------------------------------------------------
class _FileProblem(DataError):
    """A file-level problem; ``kind`` and ``detail`` (without the path) feed the report."""

    def __init__(self, kind: str, path: Path, detail: str):
        super().__init__(f"{path}: {detail}")
        self.kind = kind
        self.detail = detail


def _file_problem(problem: JsonProblem) -> _FileProblem:
    if problem.kind == "missing":
        return _FileProblem("missing_file", problem.path, "file not found")
    return _FileProblem("unreadable_file", problem.path, f"not readable as JSON: {problem.cause}")


def _read_json(path: Path) -> Any:
    """Parsed JSON; a missing or unparsable file is a DataError naming it."""
    return read_json(path, error=_file_problem)


def _read_records(path: Path) -> list[Any]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise _FileProblem("unreadable_file", path, f"expected a JSON list of records, got {type(data).__name__}")
    return data


def _strip_location(message: str, path: Path, index: int) -> str:
    """data.py's messages start with ``<path>: record <i>: ``; the report shows those separately."""
    prefix = f"{path}: record {index}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _full(root: Path, relative: str) -> Path:
    return Path(relative) if Path(relative).is_absolute() else Path(root) / relative


# -- images ------------------------------------------------------------------------------
def image_file_problem(path: Path) -> tuple[str, str] | None:
    """``("missing_image" | "corrupt_image", detail)`` or None when PIL can decode the file.

    ``verify`` catches broken structure cheaply but not truncated pixel data, so
    the image is decoded too.
    """
    from PIL import Image

    if not path.is_file():
        return "missing_image", f"image not found: {path}"
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return "corrupt_image", f"cannot decode image {path} ({decode_failure(exc, path)})"
    return None


class ImageChecker:
    """Checks each image file once (VQA tasks reuse images across many records).

    With ``verifier`` (the benchmark's image manifest) a file is compared with its
    manifest entry before it is decoded. With ``record_entries`` the sha256 and size
    of every image that passes are collected in ``entries`` (for writing a manifest).
    """

    def __init__(self, root: Path, check_files: bool = True, verifier: ImageVerifier | None = None,
                 record_entries: bool = False):
        self.root = Path(root)
        self.check_files = check_files
        self.verifier = verifier
        self.entries: dict[str, ImageEntry] | None = {} if record_entries else None
        self._seen: dict[tuple[Path, str], tuple[str, str] | None] = {}

    def problem(self, task: TaskSpec, record: dict) -> tuple[str, str] | None:
        """The record's image problem, None when it has no image or the image is fine."""
        relpath = record.get("image")
        if not relpath:
            return None
        try:
            path = resolve_image(self.root, task, relpath)
        except DataError as exc:
            return "escaping_image", exc.message
        if not self.check_files:
            return None
        key = image_key(task.image_root, relpath)
        if (path, key) not in self._seen:
            self._seen[(path, key)] = self._file_problem(path, key)
        return self._seen[(path, key)]

    def _file_problem(self, path: Path, key: str) -> tuple[str, str] | None:
        if self.verifier is not None and path.is_file():
            try:
                self.verifier.read(path, key, "")
            except DataError as exc:
                return "manifest_mismatch", exc.message
        issue = image_file_problem(path)
        if issue is None and self.entries is not None:
            self.entries[key] = entry_of(path)
        return issue


# -- the whole-benchmark check -----------------------------------------------------------
def _selected_specs(benchmark: Benchmark, tasks: Any) -> list[TaskSpec]:
    from prism.config.selection import task_selection

    specs = benchmark.task_specs()
    spec = getattr(benchmark.config, "tasks", None) if tasks is None else tasks
    return [specs[i] for i in task_selection(spec, [s.name for s in specs])]


def check_benchmark(benchmark: Benchmark, *, tasks: Any = None, check_images: bool = True,
                    max_examples: int = DEFAULT_MAX_EXAMPLES,
                    progress: ProgressFn | None = None, write_manifest: bool = False) -> CheckReport:
    """Check every selected task's training and test files, images and caption ground truth.

    ``tasks`` takes what ``benchmark.tasks`` takes (names, indices, ranges); None
    uses the benchmark config's selection (all tasks when that is not set).
    The whole files are checked: ``max_*_samples`` caps do not apply.
    ``check_images=False`` checks the annotations only (image paths are still
    checked for escaping the image folder, which needs no disk access).
    ``progress(description, done, total)`` is called as records are checked.
    Images are compared with the root's image manifest (sha256 and size) when it has
    one. ``write_manifest=True`` records every image instead, and (re)writes the
    manifest when the check finds no problem; an existing manifest's entries for
    images of tasks not checked now are kept. ``report.manifest`` is the path written.
    """
    if write_manifest and not check_images:
        raise ConfigError("writing the image manifest reads every image: it cannot be combined with "
                          "not checking images (--no-images)")
    root = benchmark.root
    report = CheckReport(benchmark=benchmark.id or type(benchmark).__name__, root=str(root),
                         images_checked=check_images, max_examples=max_examples)
    specs = _selected_specs(benchmark, tasks)
    if not root.is_dir():
        report.add(Problem("missing_file", "", "", str(root), None, "benchmark data folder not found"))
        report.tasks = [TaskCheck(s.name) for s in specs]
        return report
    verifier = None if write_manifest or not check_images else verifier_for(root, "hash")
    images = ImageChecker(root, check_files=check_images, verifier=verifier, record_entries=write_manifest)
    alternatives = _accepted_alternatives(benchmark)
    for spec in specs:
        task = TaskCheck(spec.name)
        report.tasks.append(task)
        image_folder = _full(root, spec.image_root)
        task.files["images"] = str(image_folder)
        if check_images and not image_folder.is_dir():
            report.add(Problem("missing_file", spec.name, "images", str(image_folder), None,
                               "image folder not found"), task)
        _check_split(report, task, spec, "train", images, progress, alternatives)
        valid_tests = _check_split(report, task, spec, "test", images, progress, alternatives)
        if spec.gt_file and (spec.metric == "coco_caption" or _full(root, spec.gt_file).exists()):
            _check_gt(report, task, spec, valid_tests, alternatives)
    if write_manifest and report.ok:
        try:
            existing = ImageManifest.load(root)
        except DataError:  # an unreadable manifest is what rewriting it repairs
            existing = None
        entries = {**(existing.entries if existing is not None else {}), **(images.entries or {})}
        report.manifest = str(ImageManifest.write(root, entries))
        report.manifest_images = len(images.entries or {})
    return report


def _accepted_alternatives(benchmark: Benchmark) -> dict[tuple[str, str], str]:
    """For published benchmarks: ``(task, slot) -> " (also accepted: ...)"`` for missing-file lines."""
    resolve = getattr(benchmark, "resolve_tasks", None)
    if resolve is None:
        return {}
    found: dict[tuple[str, str], str] = {}
    for task in resolve():
        for slot in task.slots:
            if slot.alternatives:
                found[(task.spec.name, slot.slot)] = f" (also accepted: {', '.join(slot.alternatives)})"
    return found


def _check_split(report: CheckReport, task: TaskCheck, spec: TaskSpec, split: str, images: ImageChecker,
                 progress: ProgressFn | None, alternatives: dict[tuple[str, str], str]) -> list[tuple[int, dict]]:
    """Check one annotation file; returns its structurally valid records with their indices."""
    root = images.root
    relative = spec.train_file if split == "train" else spec.test_file
    path = _full(root, relative)
    task.files[split] = str(path)
    try:
        records = _read_records(path)
    except _FileProblem as exc:
        detail = exc.detail + (alternatives.get((spec.name, split), "") if exc.kind == "missing_file" else "")
        report.add(Problem(exc.kind, spec.name, split, str(path), None, detail), task)
        return []
    setattr(task, f"{split}_records", len(records))
    validate = validate_train_record if split == "train" else validate_test_record
    id_key = "id" if split == "train" else "question_id"
    first_seen: dict[str, int] = {}
    valid: list[tuple[int, dict]] = []
    description = f"{spec.name} {split}"
    for index, record in enumerate(records):
        if progress is not None and index % 256 == 0:
            progress(description, index, len(records))
        try:
            validate(record, path, index)
        except DataError as exc:
            report.add(Problem("malformed_record", spec.name, split, str(path), index,
                               _strip_location(exc.message, path, index)), task)
            continue
        valid.append((index, record))
        key = record.get(id_key)
        if key is not None:
            text = str(key)
            if text in first_seen:
                report.add(Problem("duplicate_id", spec.name, split, str(path), index,
                                   f"{id_key} {key!r} repeats record {first_seen[text]}"), task)
            else:
                first_seen[text] = index
        issue = images.problem(spec, record)
        if issue is not None:
            report.add(Problem(issue[0], spec.name, split, str(path), index, issue[1]), task)
    if progress is not None:
        progress(description, len(records), len(records))
    return valid


def _check_gt(report: CheckReport, task: TaskCheck, spec: TaskSpec, tests: list[tuple[int, dict]],
              alternatives: dict[tuple[str, str], str]) -> None:
    """Every test record must find its references the way the caption metric matches them
    (``CaptionMatcher``: by image id or file name, never by position)."""
    from prism.evaluation.loading import check_coco_gt

    path = _full(Path(report.root), spec.gt_file or "")
    task.files["gt"] = str(path)
    if not path.is_file():
        report.add(Problem("missing_file", spec.name, "gt", str(path), None,
                           "caption ground truth not found" + alternatives.get((spec.name, "gt"), "")), task)
        return
    try:
        data = _read_json(path)
        check_coco_gt(data, source=str(path))
    except DataError as exc:
        detail = exc.detail if isinstance(exc, _FileProblem) else exc.message.removeprefix(f"{path}: ")
        report.add(Problem("invalid_gt", spec.name, "gt", str(path), None, detail), task)
        return
    matcher = CaptionMatcher(data["images"])
    captioned = {str(ann["image_id"]) for ann in data["annotations"]}
    test_path = str(_full(Path(report.root), spec.test_file))
    for index, record in tests:
        key, why = matcher.find(record)
        if key is not None and key not in captioned:
            why = f"ground-truth image {key} has no caption"
        if why:
            report.add(Problem("missing_gt", spec.name, "test", test_path, index,
                               f"question_id {record['question_id']!r}: {why} in {path.name}"), task)


# -- training data under a fix policy ----------------------------------------------------
def load_train_records_checked(root: Path, task: TaskSpec, max_samples: int | None = None,
                               policy: FixPolicy | str = "error", *, check_images: bool = True,
                               warn: Callable[[str], None] | None = None,
                               verify_images: str = "size") -> list[dict]:
    """The task's training records with their images checked, under a fix policy.

    ``"error"``: like ``data.load_train_records`` (every record's structure is
    validated), then each kept record's image must resolve inside the image root
    and decode; the first bad one raises a DataError naming file and record index.
    ``"skip"``: bad records (malformed, image missing / corrupt / outside the
    image root) are dropped, reading on until ``max_samples`` good ones are
    found; one warning line gives the count and the first reasons. ``warn``
    receives that line (default: ``warnings.warn`` with SkippedRecordsWarning).
    A missing or unreadable file is an error under both policies. With
    ``check_images`` and an image manifest in ``root``, an image that differs from
    it (``verify_images``: "size" or "hash") is bad too.
    """
    if policy not in FIX_POLICIES:
        raise ConfigError(f"benchmark.fix_policy: expected 'error' or 'skip', got {policy!r}")
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be at least 1, got {max_samples}")
    root = Path(root)
    path = root / task.train_file
    images = ImageChecker(root, check_files=check_images,
                          verifier=verifier_for(root, verify_images) if check_images else None)
    if policy == "error":
        hint = ('fix or remove the record, or set [benchmark] fix_policy = "skip"; '
                "`prism data check` lists every problem")
        try:
            records = load_train_records(root, task, max_samples)
        except DataError as exc:
            raise DataError(exc.message, hint=exc.hint or hint) from None
        for index, record in enumerate(records):
            issue = images.problem(task, record)
            if issue is not None:
                raise DataError(f"{path}: record {index}: {issue[1]}", hint=hint)
        return records
    return _skip_bad(path, task, _read_training_list(path, task), images, max_samples, warn)


def _read_training_list(path: Path, task: TaskSpec) -> list[Any]:
    try:
        return _read_records(path)
    except DataError as exc:
        raise DataError(f"training ({task.name}): {exc.message}",
                        hint="check [benchmark] root and that the benchmark's files are unpacked there") from None


def _skip_bad(path: Path, task: TaskSpec, records: list[Any], images: ImageChecker, max_samples: int | None,
              warn: Callable[[str], None] | None) -> list[dict]:
    kept: list[dict] = []
    reasons: list[str] = []
    dropped = 0
    for index, record in enumerate(records):
        if max_samples is not None and len(kept) >= max_samples:
            break
        try:
            validate_train_record(record, path, index)
            issue = images.problem(task, record)
            reason = issue[1] if issue is not None else None
        except DataError as exc:
            reason = _strip_location(exc.message, path, index)
        if reason is None:
            kept.append(record)
            continue
        dropped += 1
        if len(reasons) < WARN_REASONS:
            reasons.append(f"record {index}: {reason}")
    if dropped:
        more = "; ..." if dropped > len(reasons) else ""
        line = (f"{task.name}: skipped {dropped} bad training record(s) of {path} "
                f'(fix_policy = "skip"): {"; ".join(reasons)}{more}')
        if warn is not None:
            warn(line)
        else:
            warnings.warn(line, SkippedRecordsWarning, stacklevel=3)
    if not kept:
        raise DataError(f"{path}: no usable training record for task {task.name} "
                        f"({dropped} skipped as bad)", hint="`prism data check` lists the problems")
    return kept


_SKIPPABLE = ("malformed_record", "missing_image", "corrupt_image", "escaping_image")


def check_summary_error(report: CheckReport) -> DataError:
    """The one-line DataError a command raises after printing a report with problems."""
    hint = "fix the files listed above"
    if any(report.counts.get(kind) for kind in _SKIPPABLE):
        hint += '; to train without the bad training records set [benchmark] fix_policy = "skip"'
    return DataError(report.summary(), hint=hint)


__all__ = [
    "DEFAULT_MAX_EXAMPLES",
    "FIX_POLICIES",
    "PROBLEM_KINDS",
    "CheckReport",
    "FixPolicy",
    "ImageChecker",
    "Problem",
    "SkippedRecordsWarning",
    "TaskCheck",
    "check_benchmark",
    "check_summary_error",
    "image_file_problem",
    "load_train_records_checked",
]

