"""Re-create predictions (and the matrix) from saved checkpoints.

The base model is loaded once and each checkpoint's adapters are swapped in,
in task order; a 7B model is never reloaded per matrix cell. Every checkpoint is
verified before anything is loaded or written: predictions are never made from
weights that are not the ones the checkpoint's manifest names.
"""

from __future__ import annotations

from typing import Any

from prism.backbones.feature_cache import attach as attach_feature_cache
from prism.backbones.feature_cache import stats_of as feature_cache_stats
from prism.checkpoint import store
from prism.engine.evaluate import evaluate_row, load_or_new_matrix, write_summary
from prism.engine.reporter import Reporter
from prism.engine.run_record import update_run_record
from prism.engine.task_checkpoints import restore_checkpoint
from prism.engine.session import build_method, load_backbone, plan_run, quiet_libraries
from prism.errors import CheckpointError


def infer(resolved: Any, *, only: list[str] | None = None, reporter: Reporter | None = None,
          hashes: bool = True) -> tuple[Any, Any, dict]:
    """Predict with each checkpoint and fill its matrix row; ``hashes`` False skips only the sha256 check."""
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
    identity = {"method_id": plan.config.method.id, "backbone_id": plan.config.backbone.id}
    for position in positions:  # all of them before the first prediction is written
        store.require_verified(layout.checkpoint(plan.indices[position]), hashes=hashes,
                               method=identity["method_id"], backbone=identity["backbone_id"])
    root = plan.benchmark.prepare()
    backbone = load_backbone(plan, purpose="infer")  # at [infer] precision
    method = build_method(plan)
    method.attach(backbone)
    attach_feature_cache(backbone, plan.config.infer.feature_cache, layout.output_dir)
    matrix = load_or_new_matrix(layout, [t.name for t in plan.sequence])
    for position in positions:
        # hashed above; sizes and the method's own needs (its adapters) are checked again here
        restore_checkpoint(method, layout.checkpoint(plan.indices[position]), hashes=False, **identity)
        evaluate_row(plan, backbone, method, root, position, matrix, reporter)
    summary = write_summary(layout, matrix, joint=bool(method.joint), indices=plan.indices,
                            oracle=bool(plan.config.infer.task_oracle))
    update_run_record(layout.results_dir, feature_cache=feature_cache_stats(backbone))
    return layout, matrix, summary
