"""Training records under a fix policy: stop at the first bad record (``"error"``) or drop bad ones (``"skip"``).

What a run uses to load a task's training data (``load_train_records_checked``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from prism.benchmarks.base import TaskSpec
from prism.benchmarks.check_inputs import ImageChecker, read_records, strip_location
from prism.benchmarks.records import load_train_records, validate_train_record
from prism.benchmarks.image_manifest import verifier_for
from prism.errors import ConfigError, DataError

FixPolicy = Literal["error", "skip"]


FIX_POLICIES: tuple[str, ...] = ("error", "skip")


#: How many reasons the one-line skip warning quotes.
WARN_REASONS = 3


class SkippedRecordsWarning(UserWarning):
    """Training records were dropped under ``fix_policy = "skip"``."""


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
        return read_records(path)
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
            reason = strip_location(exc.message, path, index)
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
