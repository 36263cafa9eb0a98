"""Atomic checkpoint writes and verification.

A checkpoint is written into a hidden temporary sibling folder, a
``manifest.json`` with the sha256 of every file is written last, and only then
is the folder renamed into place. A kill at any moment therefore leaves either
the previous complete checkpoint or the new complete one — never a half-written
folder under the real name. Nothing is pickled: tensors go to safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prism.atomic import replace_folder
from prism.errors import CheckpointError

MANIFEST = "manifest.json"
STATE_JSON = "prism_state.json"
STATE_TENSORS = "prism_state.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(final: Path, fill: Callable[[Path], None]) -> Path:
    """Create checkpoint ``final`` atomically; ``fill(tmp_dir)`` writes its files."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{time.time_ns()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        fill(tmp)
        files = {}
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())
                files[str(path.relative_to(tmp))] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        write_json_atomic(tmp / MANIFEST, {"format": "prism-checkpoint/1", "files": files})
        _fsync_dir(tmp)
        replace_folder(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def recover_interrupted(parent: Path) -> None:
    """After a kill between the two renames, put the previous checkpoint back."""
    if not parent.is_dir():
        return
    for old in parent.glob(".*.old-*"):
        name = old.name[1:].split(".old-")[0]
        target = parent / name
        if not target.exists():
            os.rename(old, target)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in parent.glob(".*.tmp-*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def checkpoint_complete(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() and (folder / STATE_JSON).is_file()


def verify_checkpoint(folder: Path) -> list[str]:
    """Problems found (empty when every file in the manifest is present and matches)."""
    if not folder.is_dir():
        return [f"{folder} does not exist"]
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path} is missing: the checkpoint was not completed"]
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return [f"{manifest_path} is not valid JSON: {exc}"]
    problems = []
    for name, meta in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing")
        elif path.stat().st_size != meta.get("bytes"):
            problems.append(f"{name}: size {path.stat().st_size} != {meta.get('bytes')} in the manifest")
        elif sha256_file(path) != meta.get("sha256"):
            problems.append(f"{name}: sha256 does not match the manifest")
    return problems


@dataclass
class CheckpointInfo:
    """What prism_state.json says about a checkpoint."""

    path: Path
    state: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def config_hash(self) -> str | None:
        return self.state.get("config_hash")

    @property
    def tasks_seen(self) -> list[str]:
        return list(self.state.get("tasks_seen", []))


def read_checkpoint_info(folder: Path) -> CheckpointInfo:
    state_path = folder / STATE_JSON
    if not state_path.is_file():
        raise CheckpointError(
            f"{folder} is not a complete prism checkpoint ({STATE_JSON} is missing)",
            hint="`prism ckpt list` shows the checkpoints of the configured run",
        )
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{state_path} is not valid JSON: {exc}") from exc
    files = {}
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        files = json.loads(manifest_path.read_text(encoding="utf-8")).get("files", {})
    return CheckpointInfo(path=folder, state=state, files=files)
