"""run.json: what a run was (fingerprint, environment, tasks) and what it did (costs, caches).

One writer per key: the loop writes the start record, and later parts of a run (cost
accounting, the feature cache) add their own top-level key with ``update_run_record``.
Every write is atomic, so a kill leaves the previous complete record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prism.checkpoint import store

RUN_FILE = "run.json"


def read_run_record(results_dir: Path) -> dict[str, Any]:
    """The run's record, or {} when there is none (or it cannot be read)."""
    path = results_dir / RUN_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_run_record(results_dir: Path, record: dict[str, Any]) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(results_dir / RUN_FILE, record)


def update_run_record(results_dir: Path, **fields: Any) -> dict[str, Any]:
    """Set top-level ``fields`` of run.json, keeping the rest; returns the new record."""
    record = read_run_record(results_dir)
    record.update(fields)
    write_run_record(results_dir, record)
    return record
