"""What a checkpoint holds, read without loading a model (and without torch)."""

from __future__ import annotations

import json
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
                complete = store.checkpoint_complete(folder)
                state = store.read_checkpoint_info(folder).state if complete else {}
                found.append({"name": folder.name, "path": str(folder), "benchmark": bench_dir.name,
                              "method": method_dir.name, "task_index": parsed[0], "backbone": parsed[1],
                              "complete": complete, "tasks_seen": state.get("tasks_seen", []),
                              "created": state.get("created")})
    return found


def _task_order(path: Path) -> tuple[int, str]:
    parsed = parse_checkpoint_name(path.name)
    return (parsed[0], path.name) if parsed else (1 << 30, path.name)


def resolve_checkpoint(name_or_path: str, candidates: list[dict[str, Any]]) -> Path:
    """A path, or a name like ``Task2_llava`` among the configured run's checkpoints."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
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
    info = store.read_checkpoint_info(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(folder))] = path.stat().st_size
    report: dict[str, Any] = {"path": str(folder), "state": info.state, "files": files}
    adapter_file = folder / store.ADAPTER_WEIGHTS
    if adapter_file.is_file():
        report["adapter_tensors"] = _tensor_summary(adapter_file)
    config_file = folder / store.ADAPTER_CONFIG
    if config_file.is_file():
        report["adapter_config"] = json.loads(config_file.read_text(encoding="utf-8"))
    state_file = folder / store.STATE_TENSORS
    if state_file.is_file():
        report["state_tensors"] = _tensor_summary(state_file)
    if verify:
        report["problems"] = store.verify_checkpoint(folder)
        report["verified"] = not report["problems"]
    return report


def _tensor_summary(path: Path) -> dict[str, Any]:
    """Tensor count, total elements and dtypes from the safetensors header (no torch needed)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    total = 0
    dtypes: dict[str, int] = {}
    for meta in header.values():
        count = 1
        for dim in meta["shape"]:
            count *= dim
        total += count
        dtypes[meta["dtype"]] = dtypes.get(meta["dtype"], 0) + 1
    return {"tensors": len(header), "elements": total, "dtypes": dtypes, "keys_sample": sorted(header)[:6]}
