"""Benchmark annotation files: reading them and checking every record's structure.

A bad record is a DataError naming the file and the record's index. Standard
library only (no torch): ``prism data check`` and scoring read records too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prism.benchmarks.base import TaskSpec
from prism.errors import ConfigError, DataError
from prism.jsonfile import JsonProblem, read_json

IMAGE_PLACEHOLDER = "<image>"
#: who speaks a conversation's turns, in turn
_ROLES = ("human", "gpt")


def _read_list(path: Path, what: str) -> list[Any]:
    def error(problem: JsonProblem) -> DataError:
        if problem.kind == "missing":
            return DataError(f"{what} file not found: {path}",
                             hint="check [benchmark] root and that the benchmark's files are unpacked there")
        return DataError(f"cannot read {what} file {path}: {problem.cause}")

    data = read_json(path, error=error)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _bad(path: Path, index: int, problem: str) -> DataError:
    return DataError(f"{path}: record {index}: {problem}")


def _check_image_field(record: dict, path: Path, index: int) -> None:
    if "image" in record and record["image"] is not None and not isinstance(record["image"], str):
        raise _bad(path, index, f"'image' must be a path string, got {type(record['image']).__name__}"
                   " (multi-image records are not supported)")


def validate_train_record(record: Any, path: Path, index: int) -> None:
    """Raise DataError unless ``record`` is a LLaVA conversation record prism can train on."""
    if not isinstance(record, dict):
        raise _bad(path, index, f"expected an object, got {type(record).__name__}")
    _check_image_field(record, path, index)
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise _bad(path, index, "'conversations' must be a non-empty list")
    placeholders = 0
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise _bad(path, index, f"conversations[{t}] must be an object with a string 'value'")
        expected = _ROLES[t % 2]
        if turn.get("from") != expected:
            raise _bad(path, index, f"conversations[{t}] is from {turn.get('from')!r}, expected {expected!r} "
                       "(turns alternate human/gpt, starting with human)")
        if IMAGE_PLACEHOLDER in turn["value"] and expected == "gpt":
            raise _bad(path, index, f"conversations[{t}]: an answer contains {IMAGE_PLACEHOLDER}")
        placeholders += turn["value"].count(IMAGE_PLACEHOLDER)
    if turns[-1].get("from") != "gpt":
        raise _bad(path, index, "the conversation ends with a human turn (nothing to learn)")
    has_image = bool(record.get("image"))
    if placeholders > 1:
        raise _bad(path, index, f"{placeholders} {IMAGE_PLACEHOLDER} placeholders (one image per record)")
    if placeholders and not has_image:
        raise _bad(path, index, f"the text has {IMAGE_PLACEHOLDER} but the record has no 'image'")


def validate_test_record(record: Any, path: Path, index: int) -> None:
    """Raise DataError unless ``record`` has question_id, text and answer (image optional)."""
    if not isinstance(record, dict):
        raise _bad(path, index, f"expected an object, got {type(record).__name__}")
    qid = record.get("question_id")
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        raise _bad(path, index, "'question_id' must be an integer or a string")
    if not isinstance(record.get("text"), str):
        raise _bad(path, index, "'text' must be a string")
    answer = record.get("answer")
    if not (isinstance(answer, str) or (isinstance(answer, list) and all(isinstance(a, str) for a in answer))):
        raise _bad(path, index, "'answer' must be a string or a list of strings")
    _check_image_field(record, path, index)
    if record["text"].count(IMAGE_PLACEHOLDER) > 1:
        raise _bad(path, index, f"more than one {IMAGE_PLACEHOLDER} in 'text'")
    if IMAGE_PLACEHOLDER in record["text"] and not record.get("image"):
        raise _bad(path, index, f"the text has {IMAGE_PLACEHOLDER} but the record has no 'image'")


def _cap(records: list[dict], max_samples: int | None) -> list[dict]:
    if max_samples is None:
        return records
    if max_samples < 1:
        raise ConfigError(f"max_samples must be at least 1, got {max_samples}")
    return records[:max_samples]


def load_train_records(root: Path, task: TaskSpec, max_samples: int | None = None) -> list[dict]:
    """The task's training records (validated), the first ``max_samples`` of them if given."""
    path = Path(root) / task.train_file
    records = _read_list(path, f"training ({task.name})")
    for i, record in enumerate(records):
        validate_train_record(record, path, i)
    return _cap(records, max_samples)


def load_test_records(root: Path, task: TaskSpec, max_samples: int | None = None) -> list[dict]:
    """The task's test records (validated, unique question ids), capped at ``max_samples``."""
    path = Path(root) / task.test_file
    records = _read_list(path, f"test ({task.name})")
    seen: dict[str, int] = {}
    for i, record in enumerate(records):
        validate_test_record(record, path, i)
        key = str(record["question_id"])
        if key in seen:
            raise _bad(path, i, f"question_id {record['question_id']!r} repeats record {seen[key]} "
                       "(predictions are keyed by question_id)")
        seen[key] = i
    return _cap(records, max_samples)
