"""Prediction files: JSONL, one line per question, append-only.

A rerun keeps lines already written for the same model and only generates the
rest; a torn last line (the writer was killed mid-write) is dropped.

Under several processes each rank appends what it generates to its own shard file
(``.shards/<task>.rank<r>.jsonl`` beside the prediction file: no two writers share a
file), and rank 0 merges the shards into the prediction file: lines of questions the
file already answers are skipped, so a merge cut off between appending and removing
the shards is redone without duplicates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from prism.atomic import write_file_atomic


SHARDS = ".shards"


def read_done(path: Path, model_id: str, *, clean: bool = True) -> list[dict[str, Any]]:
    """Complete lines of ``path`` written for ``model_id``; rewrites the file without the rest
    (``clean`` False: only reads, for a process that is not the file's writer)."""
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
    if dirty and clean:
        rewrite(path, kept)
    return kept


def rewrite(path: Path, records: Iterable[dict[str, Any]]) -> None:
    write_file_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def append(path: Path, records: Iterable[dict[str, Any]], *, durable: bool = True) -> None:
    """Append lines, flushed to the OS (a killed process loses none of them); ``durable`` also
    fsyncs them to disk (power loss), which ``sync`` otherwise does once at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        if durable:
            os.fsync(handle.fileno())


def sync(path: Path) -> None:
    """fsync a file appended to without ``durable``."""
    if path.is_file():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def shard_path(path: Path, rank: int) -> Path:
    """Where rank ``rank`` appends its share of ``path``'s predictions."""
    return path.parent / SHARDS / f"{path.stem}.rank{rank}{path.suffix}"


def merge_shards(path: Path, model_id: str) -> int:
    """Append every shard's lines for ``model_id`` that ``path`` lacks, then remove the shards.

    Returns how many lines were added. Only the writer of ``path`` (rank 0) calls it.
    """
    folder = path.parent / SHARDS
    shards = sorted(folder.glob(f"{path.stem}.rank*{path.suffix}")) if folder.is_dir() else []
    if not shards:
        return 0
    answered = {str(r["question_id"]) for r in read_done(path, model_id)}
    added: list[dict[str, Any]] = []
    for shard in shards:
        for record in read_done(shard, model_id, clean=False):
            key = str(record["question_id"])
            if key not in answered:
                answered.add(key)
                added.append(record)
    if added:
        append(path, added)
    for shard in shards:
        shard.unlink()
    try:
        folder.rmdir()
    except OSError:  # other tasks' shards are still there
        pass
    return len(added)
