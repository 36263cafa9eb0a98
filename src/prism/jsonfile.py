"""Reading a JSON file, every reader the same way; each caller says what a failure means.

Model and tower configs, DeepSpeed configs, benchmark files and checkpoint
records are all read by ``read_json``. What goes wrong is described by a
``JsonProblem``; the caller's ``error`` turns it into the exception its users
should see (its own type, message and hint), so messages stay where the
context is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["JsonFileError", "JsonProblem", "read_json"]


@dataclass(frozen=True)
class JsonProblem:
    """Why ``path`` gave no JSON value."""

    path: Path
    #: "missing" (no such file, or a folder), "unreadable" (another OSError), "not_utf8",
    #: "not_json", or "not_object" (valid JSON, but an object was wanted)
    kind: str
    #: the underlying OSError, UnicodeDecodeError or ValueError (None for "not_object")
    cause: BaseException | None = None
    #: for "not_object": the Python type the JSON held ("list", "str", ...)
    found: str = ""

    @property
    def detail(self) -> str:
        """What is wrong, without the path."""
        if self.kind in ("missing", "unreadable"):
            return f"cannot be read ({getattr(self.cause, 'strerror', None) or self.cause})"
        if self.kind == "not_utf8":
            return "is not UTF-8 text"
        if self.kind == "not_json":
            return f"is not valid JSON ({self.cause})"
        return f"holds a JSON {self.found}, not an object"


class JsonFileError(ValueError):
    """What ``read_json`` raises when the caller gives no ``error`` of its own."""

    def __init__(self, problem: JsonProblem):
        super().__init__(f"{problem.path} {problem.detail}")
        self.problem = problem


def read_json(path: Path | str, *, want_object: bool = False,
              error: Callable[[JsonProblem], BaseException] | None = None) -> Any:
    """The JSON value in ``path`` (UTF-8); with ``want_object``, only a JSON object will do.

    On failure raises ``error(problem)`` (default: ``JsonFileError``), with no
    parser traceback chained to it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        problem = JsonProblem(path, "missing", exc)
    except OSError as exc:
        problem = JsonProblem(path, "unreadable", exc)
    except UnicodeDecodeError as exc:
        problem = JsonProblem(path, "not_utf8", exc)
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        problem = JsonProblem(path, "not_json", exc)
    else:
        if not want_object or isinstance(data, dict):
            return data
        problem = JsonProblem(path, "not_object", found=type(data).__name__)
    raise (error or JsonFileError)(problem)
