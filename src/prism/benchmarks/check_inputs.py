"""Reading a benchmark's files for a check, and checking one record's image.

A file-level problem (missing, not a JSON list) is a ``FileProblem`` whose kind
and detail feed the report; ``ImageChecker`` says what is wrong with a record's
image (missing, corrupt, outside the image folder, not as the manifest says).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prism.benchmarks.base import TaskSpec
from prism.benchmarks.images import decode_failure, resolve_image
from prism.benchmarks.image_manifest import ImageEntry, ImageVerifier, entry_of, image_key
from prism.errors import DataError
from prism.jsonfile import JsonProblem, read_json

class FileProblem(DataError):
    """A file-level problem; ``kind`` and ``detail`` (without the path) feed the report."""

    def __init__(self, kind: str, path: Path, detail: str):
        super().__init__(f"{path}: {detail}")
        self.kind = kind
        self.detail = detail


def _file_problem(problem: JsonProblem) -> FileProblem:
    if problem.kind == "missing":
        return FileProblem("missing_file", problem.path, "file not found")
    return FileProblem("unreadable_file", problem.path, f"not readable as JSON: {problem.cause}")


def read_json_file(path: Path) -> Any:
    """Parsed JSON; a missing or unparsable file is a DataError naming it."""
    return read_json(path, error=_file_problem)


def read_records(path: Path) -> list[Any]:
    data = read_json_file(path)
    if not isinstance(data, list):
        raise FileProblem("unreadable_file", path, f"expected a JSON list of records, got {type(data).__name__}")
    return data


def strip_location(message: str, path: Path, index: int) -> str:
    """data.py's messages start with ``<path>: record <i>: ``; the report shows those separately."""
    prefix = f"{path}: record {index}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def full_path(root: Path, relative: str) -> Path:
    return Path(relative) if Path(relative).is_absolute() else Path(root) / relative


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
