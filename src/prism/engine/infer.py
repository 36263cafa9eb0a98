"""Re-create predictions (and the matrix) from saved checkpoints.

The base model is loaded once and each checkpoint's adapters are swapped in,
in task order; a 7B model is never reloaded per matrix cell.
"""

from __future__ import annotations

from typing import Any

from prism.checkpoint import store
from prism.engine.loop import (Reporter, _load_or_new_matrix, _write_summary, evaluate_row,
                               restore_checkpoint)
from prism.engine.session import build_method, load_backbone, plan_run, quiet_libraries
from prism.errors import CheckpointError


def infer(resolved: Any, *, only: list[str] | None = None, reporter: Reporter | None = None) -> tuple[Any, Any, dict]:
    quiet_libraries()
    reporter = reporter or Reporter()
    plan = plan_run(resolved)
    layout = plan.layout
    positions = []
    for position, index in enumerate(plan.indices):
        name = layout.checkpoint_name(index)
        if only and name not in only:
            continue
        folder = layout.checkpoint(index)
        if not store.checkpoint_complete(folder):
            if only:
                raise CheckpointError(f"checkpoint {folder} is missing or incomplete",
                                      hint="run `prism train` to create it")
            continue
        positions.append(position)
    if not positions:
        raise CheckpointError(f"no complete checkpoints under {layout.checkpoints_dir}",
                              hint="run `prism train` first, or check [project] output_dir / --method")
    root = plan.benchmark.prepare()
    backbone = load_backbone(plan, purpose="infer")  # at [infer] precision
    method = build_method(plan)
    method.attach(backbone)
    matrix = _load_or_new_matrix(layout, plan)
    for position in positions:
        restore_checkpoint(method, layout.checkpoint(plan.indices[position]))
        evaluate_row(plan, backbone, method, root, position, matrix, reporter)
    summary = _write_summary(layout, matrix, joint=bool(method.joint))
    return layout, matrix, summary
