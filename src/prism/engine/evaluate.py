"""Evaluating a row of the accuracy matrix, and the matrix and summary files of a run.

Used by ``prism train`` (after each task) and ``prism infer`` (from saved checkpoints).
Under DDP/DeepSpeed every rank generates its share of each task's predictions (``EvalRanks``);
rank 0 merges the shards into the one prediction file, scores and writes the matrix. Each rank
holds the full weights while it generates (DeepSpeed ZeRO-3 gathers them on every rank when a
fit ends, see engine/zero.py), so generation needs no collective step and ranks never wait on
each other mid-task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prism.checkpoint import store
from prism.checkpoint.layout import RunLayout
from prism.engine.reporter import Reporter
from prism.methods.base import Method, TaskContext

MATRIX_FILE = "accuracy_matrix.json"
CL_METRICS_FILE = "cl_metrics.json"


def model_id_for(folder: Path) -> str:
    """Identifies the checkpoint predictions were made with (hash of its manifest)."""
    manifest = folder / store.MANIFEST
    if not manifest.is_file():
        return "base"
    return store.sha256_file(manifest)[:16]


def _no_barrier() -> None:
    return None


@dataclass(frozen=True)
class EvalRanks:
    """The processes that share an evaluation: this one's ``rank`` of ``size``, and a barrier."""

    rank: int = 0
    size: int = 1
    barrier: Callable[[], None] = _no_barrier

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def of(cls, accelerator: Any) -> "EvalRanks":
        return cls(rank=accelerator.process_index, size=accelerator.num_processes,
                   barrier=accelerator.wait_for_everyone)


def evaluate_row(plan: Any, backbone: Any, method: Method, root: Path, position: int,
                 matrix: Any, reporter: Reporter, ranks: EvalRanks | None = None) -> dict[str, Any]:
    """Evaluate every task seen up to ``position`` (``plan``: a RunPlan) and fill that row of the matrix.

    Every rank of ``ranks`` calls it; the scores (the returned details) and files are rank 0's.
    """
    from prism.benchmarks.data import load_test_records
    from prism.engine.scoring import score_task
    from prism.evaluation.routing import routing_accuracy
    from prism.inference import predictions as pred_files
    from prism.inference.generate import predict_task

    ranks = ranks or EvalRanks()
    cfg = plan.config
    learned = plan.sequence[position]
    layout = plan.layout
    task = TaskContext(index=position, spec=learned, sequence=plan.sequence, benchmark=cfg.benchmark.id)
    method.prepare_inference(task)
    model_id = model_id_for(layout.checkpoint(plan.indices[position]))
    details: dict[str, Any] = {}
    for i, spec in enumerate(plan.sequence[: position + 1]):
        records = load_test_records(root, spec, max_samples=cfg.benchmark.max_test_samples)
        reporter.eval_started(learned.name, spec.name, len(records))
        out_path = layout.prediction_file(plan.indices[position], spec.name)
        if ranks.size > 1:
            if ranks.main:  # shards a killed run left: kept, and the file cleaned, before ranks read it
                pred_files.merge_shards(out_path, model_id)
                pred_files.read_done(out_path, model_id)
            ranks.barrier()
        predictions = predict_task(
            backbone=backbone, method=method, spec=spec, root=root, records=records,
            out_path=out_path, model_id=model_id,
            batch_size=cfg.infer.batch_size, max_new_tokens=cfg.infer.max_new_tokens or spec.max_new_tokens,
            num_beams=cfg.infer.num_beams, temperature=cfg.infer.temperature,
            on_batch=reporter.eval_progress, num_workers=cfg.train.num_workers,
            verify_images=cfg.benchmark.verify_images, task_oracle=bool(cfg.infer.task_oracle),
            rank=ranks.rank, world_size=ranks.size)
        if ranks.size > 1:
            ranks.barrier()
            if not ranks.main:
                continue
            pred_files.merge_shards(out_path, model_id)
            predictions = _in_record_order(pred_files.read_done(out_path, model_id), records)
        result = score_task(spec, root, predictions, plan.resolved.project_dir)
        matrix.set(position, i, result.score)
        details[spec.name] = result.to_dict()
        routed = routing_accuracy(predictions)
        if routed is not None:
            details[spec.name]["routing_accuracy"] = routed
        reporter.eval_finished(learned.name, spec.name, result.score)
    if not ranks.main:
        return details
    store.write_json_atomic(layout.results_dir / "scores" / f"{layout.checkpoint_name(plan.indices[position])}.json",
                            {"learned": learned.name, "position": position, "model_id": model_id, "tasks": details})
    matrix.save(layout.results_dir / MATRIX_FILE)
    return details


def _in_record_order(lines: list[dict[str, Any]], records: list[dict]) -> list[dict[str, Any]]:
    order = {str(r["question_id"]): i for i, r in enumerate(records)}
    return sorted(lines, key=lambda r: order.get(str(r["question_id"]), len(order)))


def load_or_new_matrix(layout: RunLayout, task_names: list[str]) -> Any:
    """The run's saved accuracy matrix when it is for these tasks, else an empty one."""
    from prism.evaluation.matrix import AccuracyMatrix

    path = layout.results_dir / MATRIX_FILE
    if path.is_file():
        existing = AccuracyMatrix.load(path)
        if list(existing.task_names) == list(task_names):
            return existing
    return AccuracyMatrix(list(task_names))


def summarize(matrix: Any, *, joint: bool = False) -> dict[str, Any]:
    """CL metrics of the matrix; a joint run has only its final row, so only Last is defined."""
    summary = matrix.summary()
    if joint:
        final = matrix.row(matrix.n_tasks - 1)
        if final and all(v is not None for v in final):
            summary.update(last=sum(final) / len(final), mfn=sum(final) / len(final), rows_present=1,
                           complete=True)
        summary["note"] = ("joint training (multi-task upper bound): one model trained on every task, "
                           "evaluated once; only Last/MFN is defined")
    return summary


def add_routing(summary: dict[str, Any], layout: RunLayout, indices: list[int],
                task_names: list[str]) -> dict[str, Any]:
    """``routing_accuracy`` per task of the last evaluated row, for methods that route per sample."""
    from prism.evaluation.routing import routing_of_row

    for position in reversed(range(len(indices))):
        folder = layout.predictions(indices[position])
        if folder.is_dir():
            routing = routing_of_row(folder, task_names[: position + 1])
            if routing:
                summary["routing_accuracy"] = routing
                summary["routing_row"] = position
            break
    return summary


def write_summary(layout: RunLayout, matrix: Any, *, joint: bool = False,
                  indices: list[int] | None = None, oracle: bool = False) -> dict[str, Any]:
    """Write cl_metrics.json next to the matrix; returns the summary.

    ``indices``: the run's task indices, to add the routing accuracy of routed methods.
    ``oracle``: the run gave methods the test samples' task (``[infer] task_oracle``); it is recorded.
    """
    summary = summarize(matrix, joint=joint)
    if oracle:
        summary["task_oracle"] = True
    if indices is not None:
        add_routing(summary, layout, indices, list(matrix.task_names))
    store.write_json_atomic(layout.results_dir / CL_METRICS_FILE, summary)
    return summary
