"""The checkpoint written after each task: saving it, restoring it, and what a rerun may skip.

A task's checkpoint is complete or absent (``prism.checkpoint.store.write_checkpoint``);
a rerun skips the leading tasks whose checkpoints this same configuration made.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prism import __version__
from prism.checkpoint import store
from prism.checkpoint.layout import RunLayout
from prism.errors import UsageError
from prism.methods.base import Method


def save_checkpoint(plan: Any, method: Method, backbone: Any, position: int, fingerprint: str,
                    steps: int = 0) -> Path:
    """Write the checkpoint of task ``position`` of ``plan`` (a RunPlan): adapters, method state, prism_state.json."""
    from safetensors.torch import save_file

    from prism.adapters.io import save_adapters
    from prism.methods.owned import owned_state

    folder = plan.layout.checkpoint(plan.indices[position])
    seen = plan.sequence[: position + 1]

    def fill(tmp: Path) -> None:
        adapter_meta: dict[str, Any] = {}
        if method.adapters is not None:
            adapter_meta = save_adapters(method.adapters, tmp, base_model_name_or_path=backbone.resolved_path,
                                         slots=method.adapter_slots_for_checkpoint()) or {}
        own = owned_state(backbone.model, method.trained_base)
        tensors = {k: v.detach().contiguous().cpu() for k, v in {**method.state_dict(), **own}.items()}
        if tensors:
            save_file(tensors, str(tmp / store.STATE_TENSORS))
        store.write_json_atomic(tmp / store.STATE_JSON, {
            "prism_version": __version__,
            "config_hash": fingerprint,
            "method": plan.config.method.id,
            "method_params": plan.resolved.method_params.model_dump(mode="json"),
            "backbone": plan.config.backbone.id,
            "model": plan.config.backbone.model,
            "base_model_path": backbone.resolved_path,
            "benchmark": plan.config.benchmark.id,
            "task_index": plan.indices[position],
            "position": position,
            "tasks_seen": [t.name for t in seen],
            "task_indices_seen": plan.indices[: position + 1],
            "steps": steps,
            "adapters": adapter_meta,
            "method_state": method.state_metadata(),
            "has_state_tensors": bool(tensors),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })

    # predictions made by an older checkpoint of this task are stale
    stale = plan.layout.predictions(plan.indices[position])
    if stale.exists():
        import shutil

        shutil.rmtree(stale)
    return store.write_checkpoint(folder, fill)


def restore_checkpoint(method: Method, folder: Path, *, hashes: bool = True, method_id: str | None = None,
                       backbone_id: str | None = None) -> dict[str, Any]:
    """Load a checkpoint's method state, then its adapter weights, into ``method``.

    Nothing is loaded from a checkpoint that does not verify (``store.require_verified``:
    sizes and the core files always, sha256 unless ``hashes`` is False; ``method_id`` /
    ``backbone_id``, the loading run's, must be the ones prism_state.json names).
    """
    from safetensors.torch import load_file

    from prism.adapters.io import load_adapters
    from prism.methods.owned import load_owned_state

    has_adapters = method.adapters is not None
    info = store.require_verified(folder, hashes=hashes, adapters=has_adapters, method=method_id,
                                  backbone=backbone_id)
    tensors = {}
    if (folder / store.STATE_TENSORS).is_file():
        tensors = load_file(str(folder / store.STATE_TENSORS))
    if method.backbone is not None:
        tensors = load_owned_state(method.backbone.model, method.trained_base, tensors)
    method.load_state(tensors, info.state.get("method_state", {}))
    if has_adapters:
        load_adapters(method.adapters, folder)
    return info.state


def same_fingerprint(recorded: str | None, fingerprint: str) -> bool:
    """Whether a checkpoint's ``config_hash`` is this run's fingerprint.

    prism 0.1 checkpoints recorded its first 16 hex digits; they still match.
    """
    if not recorded:
        return False
    return recorded == fingerprint or (len(recorded) == 16 and fingerprint.startswith(recorded))


def finished_prefix(plan: Any, fingerprint: str, *, joint: bool = False) -> int:
    """How many leading tasks have complete checkpoints made by this same config.

    A joint run has one checkpoint, after the last task: it is all or nothing.
    """
    names = [t.name for t in plan.sequence]
    checks = list(enumerate(plan.indices))
    if joint:
        checks = checks[-1:]
    for position, index in checks:
        folder = plan.layout.checkpoint(index)
        if not store.checkpoint_complete(folder):
            return 0 if joint else position
        # the one check before any use: files, hashes, and that it is this run's method and backbone
        info = store.require_verified(folder, method=plan.config.method.id, backbone=plan.config.backbone.id)
        if not same_fingerprint(info.config_hash, fingerprint):
            raise UsageError(
                f"{folder} was trained with a different configuration "
                f"(fingerprint {info.config_hash}, now {fingerprint})",
                hint="pass --restart to train this run again, or set [project] output_dir to keep both",
            )
        if info.tasks_seen != names[: position + 1]:
            raise UsageError(
                f"{folder} learned tasks {info.tasks_seen}, but this run's sequence starts with "
                f"{names[: position + 1]}",
                hint="pass --restart, or use another [project] output_dir for a different task order",
            )
    return len(plan.indices)


def steps_done(plan: Any, prefix: int) -> int:
    """Optimizer steps of the tasks already finished (they start the trackers' step axis)."""
    total = 0
    for position in range(prefix):
        folder = plan.layout.checkpoint(plan.indices[position])
        if not store.checkpoint_complete(folder):  # a joint run has only its last checkpoint
            continue
        total += int(store.read_checkpoint_info(folder).state.get("steps", 0) or 0)
    return total


def clear_run(layout: RunLayout) -> None:
    """``--restart``: remove the run's checkpoints, predictions and results (called only after
    every check passed). Under torchrun the launch record the launcher just wrote is kept."""
    import os
    import shutil

    from prism.engine.launch import ARGV_ENV, LAUNCH_FILE

    record_path = layout.results_dir / LAUNCH_FILE
    relaunched = ARGV_ENV in os.environ  # a worker prism's launcher started, after writing the record
    record = json.loads(record_path.read_text(encoding="utf-8")) if relaunched and record_path.is_file() else None
    for folder in (layout.checkpoints_dir, layout.predictions_dir, layout.results_dir):
        if folder.exists():
            shutil.rmtree(folder)
    if record is not None:
        store.write_json_atomic(record_path, record)
