"""Atomic checkpoint writes and verification.

A checkpoint is written into a hidden temporary sibling folder, a
``manifest.json`` with the sha256 of every file is written last, and only then
is the folder renamed into place. A kill at any moment therefore leaves either
the previous complete checkpoint or the new complete one — never a half-written
folder under the real name. Nothing is pickled: tensors go to safetensors.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prism.atomic import replace_folder, temporary_sibling, write_json_atomic  # noqa: F401 - used as store.write_json_atomic
from prism.errors import CheckpointError
from prism.jsonfile import JsonProblem, read_json

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
    tmp = temporary_sibling(final)
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


# -- verification --------------------------------------------------------------------------------
#: the files a task checkpoint is used through; each must be listed in its manifest when present
CORE_FILES = (STATE_JSON, STATE_TENSORS, ADAPTER_WEIGHTS, ADAPTER_CONFIG)
#: what to do about a checkpoint that does not verify (``{folder}`` is filled in)
VERIFY_HINT = ("`prism ckpt verify {folder}` lists its problems; train that task again with "
               "`prism train --restart` (or restore the folder from a copy)")


def _problem(problem: JsonProblem) -> BaseException:
    cause = problem.cause
    if isinstance(cause, UnicodeDecodeError):
        return ValueError(f"not UTF-8 text ({cause.reason} at byte {cause.start})")
    if problem.kind == "not_json":
        return ValueError(f"not valid JSON ({cause})")
    return cause  # an OSError: raised as it is


def _parse_json(path: Path) -> Any:
    """The JSON in ``path``; ValueError saying what is wrong (not UTF-8, not JSON)."""
    return read_json(path, error=_problem)


def read_json_file(path: Path) -> Any:
    """The JSON in a checkpoint's file ``path``; CheckpointError naming the file when it is unreadable."""
    try:
        return _parse_json(path)
    except ValueError as exc:
        raise CheckpointError(f"{path} is {exc}: the checkpoint does not verify",
                              hint=VERIFY_HINT.format(folder=path.parent)) from None


def _read_manifest(folder: Path) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """(the manifest's ``files`` table, None), or (None, what is wrong with the manifest)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None, "missing (the checkpoint was not completed)"
    try:
        manifest = _parse_json(path)
    except ValueError as exc:
        return None, str(exc)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(meta, dict) for meta in files.values()):
        return None, "has no \"files\" table of sizes and hashes"
    return files, None


def _file_problems(folder: Path, files: dict[str, dict[str, Any]], hashes: bool) -> dict[str, str]:
    """Per listed file, what does not match the manifest (sizes always, sha256 when ``hashes``)."""
    problems: dict[str, str] = {}
    root = folder.resolve()
    for name, meta in files.items():
        path = folder / name
        if Path(name).is_absolute() or root not in path.resolve().parents:
            problems[name] = "the manifest names a file outside the checkpoint"
        elif not path.is_file():
            problems[name] = "listed in the manifest but missing"
        elif path.stat().st_size != meta.get("bytes"):
            problems[name] = f"size {path.stat().st_size} != {meta.get('bytes')} in the manifest"
        elif hashes and sha256_file(path) != meta.get("sha256"):
            problems[name] = "sha256 does not match the manifest"
    return problems


def verify_checkpoint(folder: Path, *, hashes: bool = True) -> list[str]:
    """Problems found (empty when every file in the manifest is present and matches).

    Sizes are always compared, sha256 hashes unless ``hashes`` is False. Any folder
    written by ``write_checkpoint`` (step checkpoints too); a task checkpoint about to
    be used goes through ``verify_task_checkpoint``.
    """
    if not folder.is_dir():
        return [f"{folder} does not exist"]
    files, problem = _read_manifest(folder)
    if problem:
        return [f"{MANIFEST}: {problem}"]
    return [f"{name}: {what}" for name, what in _file_problems(folder, files, hashes).items()]


def verify_task_checkpoint(folder: Path, *, hashes: bool = True, adapters: bool | None = None) -> list[str]:
    """Problems of a task checkpoint, each naming its file (empty when it can be used)."""
    return [f"{name}: {what}" for name, what in task_checkpoint_problems(folder, hashes=hashes,
                                                                         adapters=adapters).items()]


def task_checkpoint_problems(folder: Path, *, hashes: bool = True, adapters: bool | None = None) -> dict[str, str]:
    """File name -> what is wrong with it: the one check of a task checkpoint before any use.

    Every file the manifest lists must match it (sizes always, sha256 unless ``hashes``
    is False), and the core files must be listed: prism_state.json; the adapter weights
    and config when the method has adapters (``adapters``, or prism_state.json records
    some); prism_state.safetensors when prism_state.json says has_state_tensors. A core
    file in the folder but not in the manifest is a problem too (it was never verified),
    and each core file must parse (JSON; a safetensors header that fits the file).
    """
    from prism.checkpoint.tensorfile import TensorFileError, read_header

    if not folder.is_dir():
        return {str(folder): "does not exist"}
    files, problem = _read_manifest(folder)
    if problem:
        return {MANIFEST: problem}
    found = _file_problems(folder, files, hashes)
    state: Any = None
    if STATE_JSON in files and STATE_JSON not in found:
        try:
            state = _parse_json(folder / STATE_JSON)
        except ValueError as exc:
            found[STATE_JSON] = str(exc)
        if state is not None and not isinstance(state, dict):
            found[STATE_JSON], state = "not a JSON object", None
    required = {STATE_JSON}
    if adapters or (state and state.get("adapters")):
        required |= {ADAPTER_WEIGHTS, ADAPTER_CONFIG}
    if state and state.get("has_state_tensors"):
        required.add(STATE_TENSORS)
    for name in CORE_FILES:
        present = (folder / name).is_file()
        if name not in files:
            if present:
                found[name] = "in the folder but not listed in the manifest (never verified)"
            elif name in required:
                found[name] = "missing, and not listed in the manifest"
        elif present and name not in found and name != STATE_JSON:
            try:
                if name.endswith(".json") and not isinstance(_parse_json(folder / name), dict):
                    found[name] = "not a JSON object"
                elif not name.endswith(".json"):
                    read_header(folder / name)
            except (ValueError, TensorFileError) as exc:
                found[name] = str(exc)
    return found


def require_verified(folder: Path, *, hashes: bool = True, adapters: bool | None = None,
                     method: str | None = None, backbone: str | None = None) -> CheckpointInfo:
    """A task checkpoint's info once it verifies (``verify_task_checkpoint``), else CheckpointError.

    ``method`` / ``backbone``: the ids of the run that loads it; prism_state.json must
    name the same ones.
    """
    problems = verify_task_checkpoint(folder, hashes=hashes, adapters=adapters)
    if problems:
        raise CheckpointError(f"checkpoint {folder} does not verify: " + "; ".join(problems),
                              hint=VERIFY_HINT.format(folder=folder))
    info = read_checkpoint_info(folder)
    for key, expected in (("method", method), ("backbone", backbone)):
        if expected is not None and info.state.get(key) != expected:
            raise CheckpointError(
                f"{folder / STATE_JSON} names {key} {info.state.get(key)!r}, but this run's {key} is {expected!r}",
                hint=f"this checkpoint belongs to a run of {key} {info.state.get(key)!r}; point this run at its "
                     "own checkpoints ([project] output_dir, --method, --backbone)")
    return info


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
    state = read_json_file(state_path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path} is not a JSON object: the checkpoint does not verify",
                              hint=VERIFY_HINT.format(folder=folder))
    files: Any = {}
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        manifest = read_json_file(manifest_path)
        files = manifest.get("files", {}) if isinstance(manifest, dict) else {}
    return CheckpointInfo(path=folder, state=state, files=files if isinstance(files, dict) else {})
