"""What a checkpoint holds and whether it verifies, read without loading a model (and without torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prism.checkpoint import store
from prism.checkpoint.layout import parse_checkpoint_name
from prism.errors import CheckpointError


def list_checkpoints(output_dir: Path, benchmark: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
    """Every checkpoint folder under ``<output>/checkpoints/<benchmark>/<method>/``."""
    base = output_dir / "checkpoints"
    found = []
    if not base.is_dir():
        return found
    for bench_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if benchmark and bench_dir.name != benchmark:
            continue
        for method_dir in sorted(p for p in bench_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if method and method_dir.name != method:
                continue
            for folder in sorted(method_dir.iterdir(), key=_task_order):
                parsed = parse_checkpoint_name(folder.name)
                if not folder.is_dir() or parsed is None:
                    continue
                found.append({"name": folder.name, "path": str(folder), "benchmark": bench_dir.name,
                              "method": method_dir.name, "task_index": parsed[0], "backbone": parsed[1],
                              **_listing(folder)})
    return found


def _listing(folder: Path) -> dict[str, Any]:
    """What `prism ckpt list` shows of one checkpoint; a corrupted one is listed, never fatal.

    Sizes, the manifest's listing and the headers are checked (cheap); `prism ckpt
    verify` also re-hashes every file.
    """
    complete = store.checkpoint_complete(folder)
    problems = store.verify_task_checkpoint(folder, hashes=False) if complete else []
    state = _readable_state(folder) if complete else {}
    status = "incomplete" if not complete else "does not verify" if problems else "ok"
    return {"complete": complete, "status": status, "problems": problems,
            "tasks_seen": state.get("tasks_seen", []), "created": state.get("created")}


def _readable_state(folder: Path) -> dict[str, Any]:
    """prism_state.json's contents, or {} when it cannot be read (the problem is reported beside)."""
    try:
        return store.read_checkpoint_info(folder).state
    except CheckpointError:
        return {}


def _task_order(path: Path) -> tuple[int, str]:
    parsed = parse_checkpoint_name(path.name)
    return (parsed[0], path.name) if parsed else (1 << 30, path.name)


def resolve_checkpoint(name_or_path: str, candidates: list[dict[str, Any]]) -> Path:
    """A path (anywhere), or a name like ``Task2_llava`` among the configured run's checkpoints."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if os.sep in name_or_path or (os.altsep and os.altsep in name_or_path):
        raise CheckpointError(f"{path}: no such folder", hint="pass a checkpoint folder or a name from `prism ckpt list`")
    matches = [c for c in candidates if c["name"] == name_or_path]
    if len(matches) == 1:
        return Path(matches[0]["path"])
    if len(matches) > 1:
        where = ", ".join(f"{c['benchmark']}/{c['method']}" for c in matches)
        raise CheckpointError(f"{name_or_path!r} exists in several runs: {where}",
                              hint="pass the checkpoint's path, or --benchmark/--method to choose the run")
    from prism.registry import did_you_mean

    names = sorted({c["name"] for c in candidates})
    raise CheckpointError(
        f"no checkpoint named {name_or_path!r}{did_you_mean(name_or_path, names)}",
        hint=("available: " + ", ".join(names)) if names else "no checkpoints yet: run `prism train` first",
    )


def inspect_checkpoint(folder: Path, verify: bool = True) -> dict[str, Any]:
    """What ``folder`` holds, and its problems (``store.task_checkpoint_problems``).

    Sizes, the manifest's listing and the headers are always checked, sha256 hashes
    when ``verify``. A file with a problem is reported, never read further.
    """
    if not (folder / store.STATE_JSON).is_file() and not (folder / store.MANIFEST).is_file():
        raise CheckpointError(f"{folder} is not a prism checkpoint (no {store.STATE_JSON}, no {store.MANIFEST})",
                              hint="`prism ckpt list` shows the checkpoints of the configured run")
    problems = store.task_checkpoint_problems(folder, hashes=verify)
    state: dict[str, Any] = {}
    if store.STATE_JSON not in problems:
        try:
            state = store.read_checkpoint_info(folder).state
        except CheckpointError as exc:  # a manifest that does not parse is already a problem
            if store.MANIFEST not in problems:
                problems[store.STATE_JSON] = exc.message
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(folder))] = path.stat().st_size
    report: dict[str, Any] = {"path": str(folder), "state": state, "files": files}
    readable = {name for name in (store.ADAPTER_WEIGHTS, store.ADAPTER_CONFIG, store.STATE_TENSORS)
                if (folder / name).is_file() and name not in problems and store.MANIFEST not in problems}
    if store.ADAPTER_WEIGHTS in readable:
        report["adapter_tensors"] = _tensor_summary(folder / store.ADAPTER_WEIGHTS)
    if store.ADAPTER_CONFIG in readable:
        report["adapter_config"] = store.read_json_file(folder / store.ADAPTER_CONFIG)
    if store.STATE_TENSORS in readable:
        report["state_tensors"] = _tensor_summary(folder / store.STATE_TENSORS)
    report["problems"] = [f"{name}: {what}" for name, what in problems.items()]
    if verify:
        report["verified"] = not problems
    return report


def verify_report(folder: Path) -> dict[str, Any]:
    """`prism ckpt verify` of one checkpoint: every listed file re-hashed, every core file checked."""
    problems = store.verify_task_checkpoint(folder, hashes=True)
    listed = {} if problems else store.read_checkpoint_info(folder).files
    return {"name": folder.name, "path": str(folder), "verified": not problems, "problems": problems,
            "files": len(listed), "bytes": sum(int(meta.get("bytes") or 0) for meta in listed.values())}


def _tensor_summary(path: Path) -> dict[str, Any]:
    """Tensor count, total elements and dtypes from the safetensors header (no torch needed)."""
    from prism.checkpoint.tensorfile import read_header, tensor_entries

    header = tensor_entries(read_header(path))
    total = 0
    dtypes: dict[str, int] = {}
    for meta in header.values():
        count = 1
        for dim in meta["shape"]:
            count *= dim
        total += count
        dtypes[meta["dtype"]] = dtypes.get(meta["dtype"], 0) + 1
    return {"tensors": len(header), "elements": total, "dtypes": dtypes, "keys_sample": sorted(header)[:6]}
