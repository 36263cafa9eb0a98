"""Prediction files: JSONL, one line per question, append-only.

A rerun keeps lines already written for the same model and only generates the
rest; a torn last line (the writer was killed mid-write) is dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from prism.atomic import write_file_atomic


def read_done(path: Path, model_id: str) -> list[dict[str, Any]]:
    """Complete lines of ``path`` written for ``model_id``; rewrites the file without the rest."""
    if not path.is_file():
        return []
    kept: list[dict[str, Any]] = []
    dirty = False
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                dirty = True  # torn write
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dirty = True
                continue
            if record.get("model_id") != model_id:
                dirty = True
                continue
            kept.append(record)
    if dirty:
        rewrite(path, kept)
    return kept


def rewrite(path: Path, records: Iterable[dict[str, Any]]) -> None:
    write_file_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def append(path: Path, records: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
