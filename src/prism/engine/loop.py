"""The task loop: for each task, begin -> fit -> end -> save -> evaluate seen tasks -> record.

Plain and readable on purpose; each step is a named function of its own module:
the step loop (``fit``), the task checkpoints (``task_checkpoints``), evaluation of
a matrix row (``evaluate``) and the accelerator and trackers (``accelerator``).
Finished tasks (a complete checkpoint with the same run fingerprint and task
history) are skipped, so rerunning `prism train` after a crash continues where it
stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism.checkpoint import store
from prism.checkpoint.layout import RunLayout
from prism.engine.accelerator import (deepspeed_run, deepspeed_settings, environment_facts, make_accelerator,
                                      start_trackers)
from prism.engine.costs import CostTracker
from prism.engine.evaluate import EvalRanks, evaluate_row, load_or_new_matrix, summarize, write_summary
from prism.engine.reporter import Reporter
from prism.engine.run_record import update_run_record, write_run_record
from prism.engine.seeding import set_seed
from prism.backbones.feature_cache import attach as attach_feature_cache
from prism.backbones.feature_cache import stats_of as feature_cache_stats
from prism.engine.session import RunPlan, build_method, check_run, load_backbone, plan_run, quiet_libraries
from prism.engine.step_checkpoint import StepCheckpointer
from prism.engine.task_checkpoints import clear_run, finished_prefix, restore_checkpoint, save_checkpoint, steps_done
from prism.methods.base import Method, TaskContext

METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainOutcome:
    layout: RunLayout
    matrix: Any  # prism.evaluation.matrix.AccuracyMatrix
    summary: dict[str, Any]
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """What every step of the loop works with."""

    plan: RunPlan
    method: Method
    accelerator: Any
    reporter: Reporter
    fingerprint: str
    deepspeed: Any = None  # prism.engine.zero.DeepSpeedRun
    backbone: Any = None
    root: Path | None = None
    matrix: Any = None
    costs: Any = None  # prism.engine.costs.CostTracker

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def evaluates(self) -> bool:
        """Rows are evaluated after each task, by every rank (each generates its share)."""
        return bool(self.plan.config.train.eval_after_each_task)


def train(resolved: Any, *, restart: bool = False, reporter: Reporter | None = None) -> TrainOutcome:
    """Run (or continue) the configured task sequence and return the accuracy matrix.

    Everything that can fail on the configuration is checked before a file is touched, so
    that a run that cannot start (``--restart`` included) leaves its outputs as they were.
    """
    quiet_libraries()
    # in every process, before the process group exists: the config, model and routing tower
    # (fetched from the hub if needed), trackers, precision
    check_run(resolved)
    run = _open(plan_run(resolved), reporter or Reporter(), restart=restart)
    plan = run.plan
    prefix = 0 if restart else finished_prefix(plan, run.fingerprint, joint=bool(run.method.joint))
    _attach_backbone(run)
    run.costs = CostTracker(plan.layout.results_dir, run.accelerator, main=run.main)
    run.costs.load_previous()  # a resumed run keeps the costs of the tasks it skips
    _record_run(run)
    run.costs.keep([t.name for t in plan.sequence[:prefix]])
    outcome = TrainOutcome(layout=plan.layout, matrix=run.matrix, summary={})
    if prefix:
        _continue_after(run, prefix, outcome)
    step_offset = steps_done(plan, prefix)
    for position in _positions_to_train(run, prefix):
        steps = _learn_task(run, position, step_offset)
        step_offset += steps
        outcome.trained.append(plan.sequence[position].name)
        if run.evaluates:
            run.accelerator.wait_for_everyone()  # rank 0 has saved the checkpoint the predictions name
            _evaluate_row(run, position)
        run.accelerator.wait_for_everyone()
    return _close(run, outcome)


# -- the steps ----------------------------------------------------------------------------
def _open(plan: RunPlan, reporter: Reporter, *, restart: bool) -> _Run:
    """Method, accelerator and data; ``--restart`` clears the run only once the model has loaded."""
    cfg = plan.config
    set_seed(cfg.project.seed)
    method = build_method(plan)
    settings = deepspeed_settings(plan.resolved)
    accelerator = make_accelerator(cfg, plan.layout, unused_parameters=bool(method.unused_parameters),
                                   deepspeed=settings)
    run = _Run(plan=plan, method=method, accelerator=accelerator, fingerprint=plan.resolved.hash(),
               reporter=reporter if accelerator.is_main_process else Reporter(),
               deepspeed=deepspeed_run(cfg, plan.layout, accelerator, settings) if settings is not None else None)
    # --restart: a model that passes the checks but does not load (wrong family, broken weights) must
    # fail before the run is cleared; a plain rerun first learns from its checkpoints whether it can go on
    if restart:
        run.backbone = load_backbone(plan)
    if run.main:
        run.root = plan.benchmark.prepare()  # the data is there (or generated) before anything is removed
        store.recover_interrupted(plan.layout.checkpoints_dir)
        if restart:
            clear_run(plan.layout)
    accelerator.wait_for_everyone()
    start_trackers(accelerator, cfg)
    if not run.main:
        run.root = plan.benchmark.prepare()  # the data rank 0 made ready
    return run


def _attach_backbone(run: _Run) -> None:
    if run.backbone is None:
        run.backbone = load_backbone(run.plan)
    run.method.attach(run.backbone)
    attach_feature_cache(run.backbone, run.plan.config.infer.feature_cache, run.plan.layout.output_dir)


def _record_run(run: _Run) -> None:
    """config.resolved.toml and run.json in the results folder; the matrix so far."""
    plan = run.plan
    layout = plan.layout
    if run.main:
        layout.results_dir.mkdir(parents=True, exist_ok=True)
        plan.resolved.save(layout.results_dir)
        write_run_record(layout.results_dir, {
            "fingerprint": run.fingerprint, "environment": environment_facts(run.accelerator.num_processes),
            "global_batch_size": plan.config.train.global_batch_size, "tasks": [t.name for t in plan.sequence],
            "task_indices": plan.indices, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
    run.matrix = load_or_new_matrix(layout, [t.name for t in plan.sequence])


def _continue_after(run: _Run, prefix: int, outcome: TrainOutcome) -> None:
    """Restore the last finished task's checkpoint; evaluate its row if a crash left it unscored."""
    plan = run.plan
    restore_checkpoint(run.method, plan.layout.checkpoint(plan.indices[prefix - 1]))
    for position in range(prefix):
        name = plan.sequence[position].name
        outcome.skipped.append(name)
        run.reporter.task_skipped(name, f"checkpoint {plan.layout.checkpoint_name(plan.indices[position])} is complete")
    # every rank read the same saved matrix (_record_run), so they agree on whether the row is done
    if run.evaluates and not run.matrix.row_complete(prefix - 1):
        _evaluate_row(run, prefix - 1)
    run.accelerator.wait_for_everyone()


def _evaluate_row(run: _Run, position: int) -> None:
    """evaluate_row on every rank (each generates its share), timed; rank 0 counts the row's generated
    tokens from the merged prediction files."""
    plan = run.plan
    run.costs.eval_started()
    evaluate_row(plan, run.backbone, run.method, run.root, position, run.matrix, run.reporter,
                 EvalRanks.of(run.accelerator))
    files = [plan.layout.prediction_file(plan.indices[position], s.name) for s in plan.sequence[: position + 1]]
    run.costs.eval_finished(plan.sequence[position].name, files, run.backbone.tokenizer)


def _positions_to_train(run: _Run, prefix: int) -> range | list[int]:
    """The tasks still to learn; joint (the multi-task upper bound) trains once, as the last task."""
    last = len(run.plan.sequence) - 1
    if run.method.joint:
        return [last] if prefix <= last else []
    return range(prefix, len(run.plan.sequence))


def _learn_task(run: _Run, position: int, step_offset: int) -> int:
    """begin -> fit -> end -> save for one task; returns the optimizer steps it took."""
    plan, method = run.plan, run.method
    cfg = plan.config
    spec = plan.sequence[position]
    task = TaskContext(index=position, spec=spec, sequence=plan.sequence, benchmark=cfg.benchmark.id)
    # each task draws from its own seed: a resumed run trains task k exactly like an uninterrupted one
    set_seed(cfg.project.seed + 1000 * position)
    run.costs.train_started()
    method.begin_task(task)
    checkpointer = StepCheckpointer(
        folder=plan.layout.step_checkpoint(plan.indices[position]), every=cfg.train.save_every_steps,
        info={"fingerprint": run.fingerprint, "tasks_seen": [t.name for t in plan.sequence[: position + 1]]},
        writer=run.main)
    fitter, steps, result = None, 0, None
    if method.trains:
        fitter = _fitter(run, task, step_offset)
        run.reporter.task_started(position, len(plan.sequence), spec.name, fitter.steps())
        result = fitter.fit(task, on_step=run.reporter.step, checkpointer=checkpointer)
        run.reporter.task_finished(spec.name, result)
        steps = result.steps
    method.end_task(task, fitter if fitter is not None else _NoFit(run.backbone))
    if run.main:
        save_checkpoint(plan, method, run.backbone, position, run.fingerprint, steps=steps)
        checkpointer.clear()
    run.costs.train_finished(spec.name, result)
    run.costs.task_done()
    return steps


def _fitter(run: _Run, task: TaskContext, step_offset: int) -> Any:
    """The step loop over the task's training data (every task's, for joint training)."""
    from prism.benchmarks.data import TaskDataset
    from prism.engine.fit import TaskFitter

    plan, cfg = run.plan, run.plan.config
    joint = bool(run.method.joint)
    sources = range(len(plan.sequence)) if joint else [task.index]
    records = [r for p in sources for r in _training_records(plan, run.root, p, run.reporter)]
    records = run.method.training_records(task, records)
    # the run's tasks first, in run order: a training batch's task_indices are TaskContext.index
    specs = {t.name: t for t in [*plan.sequence, *plan.all_tasks]}
    dataset = TaskDataset(records, backbone=run.backbone, root=run.root, specs=specs,
                          verify_images=cfg.benchmark.verify_images)
    return TaskFitter(model=run.backbone.model, method=run.method, dataset=dataset,
                      train_cfg=cfg.train if joint else cfg.train.for_task(task.spec.name),
                      seed=cfg.project.seed + 1000 * task.index, accelerator=run.accelerator,
                      log_path=plan.layout.results_dir / METRICS_FILE, tasks_in_step=len(sources),
                      step_offset=step_offset, deepspeed=run.deepspeed)


def _training_records(plan: RunPlan, root: Path, position: int, reporter: Reporter) -> list[dict]:
    """The task's training records; bad ones fail the run or are skipped ([benchmark] fix_policy)."""
    from prism.benchmarks.check import load_train_records_checked

    spec = plan.sequence[position]
    policy = plan.config.benchmark.fix_policy
    records = load_train_records_checked(root, spec, plan.config.benchmark.max_train_samples, policy,
                                         check_images=policy == "skip", warn=reporter.message,
                                         verify_images=plan.config.benchmark.verify_images)
    for record in records:
        record["_task"] = spec.name
    return records


def _close(run: _Run, outcome: TrainOutcome) -> TrainOutcome:
    """The CL metrics of the matrix (cl_metrics.json on rank 0); the engine and trackers shut."""
    joint = bool(run.method.joint)
    outcome.summary = write_summary(run.plan.layout, run.matrix, joint=joint, indices=run.plan.indices,
                                    oracle=bool(run.plan.config.infer.task_oracle)) if run.main else summarize(run.matrix, joint=joint)
    if run.main and run.backbone is not None:
        update_run_record(run.plan.layout.results_dir, feature_cache=feature_cache_stats(run.backbone))
    if run.deepspeed is not None:
        run.deepspeed.close()
    run.accelerator.end_training()
    return outcome


class _NoFit:
    """FitHandle for methods that do not train (zeroshot)."""

    def __init__(self, backbone: Any):
        self.model = backbone.model
        self.device = next(backbone.model.parameters()).device

    def batches(self, limit=None, batch_size=None):
        return iter(())

    def forward(self, batch):
        return self.model(**batch.model_inputs())
