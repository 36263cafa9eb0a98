"""Checkpoints: PRISM's folder layout, atomic writes with a manifest, verification."""

from prism.checkpoint.layout import RunLayout
from prism.checkpoint.store import (
    CheckpointInfo,
    checkpoint_complete,
    read_checkpoint_info,
    require_verified,
    verify_checkpoint,
    verify_task_checkpoint,
    write_checkpoint,
)

__all__ = [
    "RunLayout",
    "CheckpointInfo",
    "checkpoint_complete",
    "read_checkpoint_info",
    "require_verified",
    "verify_checkpoint",
    "verify_task_checkpoint",
    "write_checkpoint",
]
