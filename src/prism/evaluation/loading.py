"""Reading prediction files and COCO caption ground truth, with errors that
name the file and line so a broken run can be repaired rather than guessed at.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism.errors import DataError

PathLike = str | os.PathLike[str]


class TruncatedPredictionWarning(UserWarning):
    """The last line of a prediction file was cut off (a killed writer); it was skipped."""


@dataclass
class PredictionFile:
    """Records of a JSONL prediction file and, if any, the truncated last line skipped."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    truncated_line: int | None = None


def read_predictions(path: PathLike) -> PredictionFile:
    """Parse a JSONL prediction file.

    Every line must be a JSON object with ``question_id`` and a string ``text``;
    question ids must be unique (a duplicate would be scored twice). A last line
    that has no newline and does not parse is what a killed append-only writer
    leaves behind: it is skipped and reported in ``truncated_line``. Any other
    bad line is a ``DataError`` naming the file and line number.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read prediction file {p}: {exc.strerror or exc}") from exc
    result = PredictionFile(path=p)
    lines = raw.split(b"\n")
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_unterminated_last = number == len(lines)  # no newline after it
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if is_unterminated_last:
                result.truncated_line = number
                break
            raise DataError(f"{p}:{number}: not valid JSON ({exc})") from exc
        _check_record(record, p, number)
        key = str(record["question_id"])
        if key in seen:
            raise DataError(
                f"{p}:{number}: question_id {record['question_id']!r} already appeared on "
                f"line {seen[key]}",
                hint="a prediction file must hold one line per question; remove the duplicate",
            )
        seen[key] = number
        result.records.append(record)
    return result


def _check_record(record: Any, path: Path, number: int) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    if "question_id" not in record:
        raise DataError(f"{path}:{number}: record has no 'question_id'")
    if not isinstance(record.get("text"), str):
        raise DataError(f"{path}:{number}: record has no string 'text' (the model output)")
    metadata = record.get("metadata", {})
    if metadata is not None and not isinstance(metadata, dict):
        raise DataError(f"{path}:{number}: 'metadata' must be an object")


def load_predictions(path: PathLike, *, allow_empty: bool = True) -> list[dict[str, Any]]:
    """The records of a JSONL prediction file (see ``read_predictions``); a
    truncated last line is skipped with a ``TruncatedPredictionWarning``.

    ``allow_empty=False`` (scoring a file the user names) makes a file without
    a single record a ``DataError``: a score over nothing is no score.
    """
    parsed = read_predictions(path)
    if not parsed.records and not allow_empty:
        cut = (f": its only line ({parsed.truncated_line}) is cut off" if parsed.truncated_line is not None
               else " (it is empty or holds only blank lines)")
        raise DataError(f"prediction file {parsed.path} holds no prediction{cut}",
                        hint="give the JSONL file `prism infer` or `prism train` wrote: one JSON object "
                             "per line with question_id and text")
    if parsed.truncated_line is not None:
        warnings.warn(
            TruncatedPredictionWarning(
                f"{parsed.path}:{parsed.truncated_line}: truncated last line skipped "
                "(the writer was interrupted); rerun inference to complete it"
            ),
            stacklevel=2,
        )
    return parsed.records


def load_coco_gt(path: PathLike) -> dict[str, Any]:
    """Load and check a COCO caption ground-truth file.

    Requires ``images`` (each with ``id`` and ``file_name``) and ``annotations``
    (each with ``image_id`` and a string ``caption`` naming a known image). Two
    images sharing one id make their references inseparable, so that is an error.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read caption ground truth {p}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{p}: not valid JSON ({exc})") from exc
    check_coco_gt(data, source=str(p))
    return data


def check_coco_gt(data: Any, *, source: str = "<caption ground truth>") -> None:
    """Validate a COCO caption dict in place; raises ``DataError`` naming ``source``."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DataError(f"{source}: expected a COCO object with 'images' and 'annotations' lists")
    ids: dict[str, str] = {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(f"{source}: images[{index}] needs 'id' and a string 'file_name'")
        key = str(image["id"])
        if key in ids:
            raise DataError(
                f"{source}: image id {image['id']!r} is used by both {ids[key]!r} and "
                f"{image['file_name']!r}; their captions cannot be told apart",
                hint="give every image its own id in the ground-truth file",
            )
        ids[key] = image["file_name"]
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise DataError(f"{source}: annotations[{index}] needs 'image_id' and a string 'caption'")
        if str(ann["image_id"]) not in ids:
            raise DataError(
                f"{source}: annotations[{index}] refers to image id {ann['image_id']!r}, "
                "which is not in 'images'"
            )
