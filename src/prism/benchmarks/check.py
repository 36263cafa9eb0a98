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

The report is ``prism.benchmarks.check_report``, file reading and the image
check ``check_inputs``, the fix policy ``fix_policy``; their public names are
importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prism.benchmarks.base import Benchmark, TaskSpec
from prism.benchmarks.check_inputs import (
    FileProblem,
    ImageChecker,
    full_path,
    image_file_problem,
    read_json_file,
    read_records,
    strip_location,
)
from prism.benchmarks.check_report import (
    DEFAULT_MAX_EXAMPLES,
    PROBLEM_KINDS,
    CheckReport,
    Problem,
    TaskCheck,
    check_summary_error,
)
from prism.benchmarks.records import validate_test_record, validate_train_record
from prism.benchmarks.fix_policy import FIX_POLICIES, FixPolicy, SkippedRecordsWarning, load_train_records_checked
from prism.benchmarks.image_manifest import ImageManifest, verifier_for
from prism.errors import ConfigError, DataError
from prism.evaluation.caption_match import CaptionMatcher

ProgressFn = Callable[[str, int, int], None]


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
        image_folder = full_path(root, spec.image_root)
        task.files["images"] = str(image_folder)
        if check_images and not image_folder.is_dir():
            report.add(Problem("missing_file", spec.name, "images", str(image_folder), None,
                               "image folder not found"), task)
        _check_split(report, task, spec, "train", images, progress, alternatives)
        valid_tests = _check_split(report, task, spec, "test", images, progress, alternatives)
        if spec.gt_file and (spec.metric == "coco_caption" or full_path(root, spec.gt_file).exists()):
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
    path = full_path(root, relative)
    task.files[split] = str(path)
    try:
        records = read_records(path)
    except FileProblem as exc:
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
                               strip_location(exc.message, path, index)), task)
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

    path = full_path(Path(report.root), spec.gt_file or "")
    task.files["gt"] = str(path)
    if not path.is_file():
        report.add(Problem("missing_file", spec.name, "gt", str(path), None,
                           "caption ground truth not found" + alternatives.get((spec.name, "gt"), "")), task)
        return
    try:
        data = read_json_file(path)
        check_coco_gt(data, source=str(path))
    except DataError as exc:
        detail = exc.detail if isinstance(exc, FileProblem) else exc.message.removeprefix(f"{path}: ")
        report.add(Problem("invalid_gt", spec.name, "gt", str(path), None, detail), task)
        return
    matcher = CaptionMatcher(data["images"])
    captioned = {str(ann["image_id"]) for ann in data["annotations"]}
    test_path = str(full_path(Path(report.root), spec.test_file))
    for index, record in tests:
        key, why = matcher.find(record)
        if key is not None and key not in captioned:
            why = f"ground-truth image {key} has no caption"
        if why:
            report.add(Problem("missing_gt", spec.name, "test", test_path, index,
                               f"question_id {record['question_id']!r}: {why} in {path.name}"), task)


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

