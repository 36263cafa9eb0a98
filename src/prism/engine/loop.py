"""The task loop: for each task, begin -> fit -> end -> save -> evaluate seen tasks -> record.

Plain and readable on purpose. Finished tasks (a complete checkpoint with the
same config fingerprint and task history) are skipped, so rerunning `prism
train` after a crash continues where it stopped.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism import __version__
from prism.checkpoint import store
from prism.checkpoint.layout import RunLayout
from prism.engine.step_checkpoint import StepCheckpointer
from prism.engine.seeding import set_seed
from prism.engine.session import RunPlan, build_method, check_run, load_backbone, plan_run, quiet_libraries
from prism.errors import ConfigError, UsageError
from prism.methods.base import Method, TaskContext

MATRIX_FILE = "accuracy_matrix.json"
CL_METRICS_FILE = "cl_metrics.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainOutcome:
    layout: RunLayout
    matrix: Any  # prism.evaluation.matrix.AccuracyMatrix
    summary: dict[str, Any]
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Reporter:
    """Progress callbacks; the CLI passes a rich implementation, tests the silent default."""

    def task_started(self, position: int, total: int, name: str, steps: int) -> None: ...
    def step(self, step: int, steps: int, loss: float) -> None: ...
    def task_finished(self, name: str, fit: Any) -> None: ...
    def task_skipped(self, name: str, reason: str) -> None: ...
    def eval_started(self, learned: str, task: str, total: int) -> None: ...
    def eval_progress(self, done: int, total: int) -> None: ...
    def eval_finished(self, learned: str, task: str, score: float) -> None: ...
    def message(self, text: str) -> None: ...


#: settings that do not change what a task's checkpoint holds
FINGERPRINT_EXCLUDED = (("benchmark", "tasks"), ("infer", "batch_size"), ("infer", "precision"), ("train", "log_every"),
                        ("train", "save_every_steps"), ("train", "report_to"), ("project", "name"),
                        ("project", "output_dir"), ("benchmark", "root"), ("benchmark", "max_test_samples"),
                        ("train", "eval_after_each_task"), ("distributed", "nproc"), ("distributed", "gpus"),
                        ("distributed", "master_port"), ("train", "num_workers"), ("benchmark", "verify_images"))


def run_fingerprint(resolved: Any) -> str:
    """Hash of everything that changes what a task's checkpoint holds (not which tasks run).

    Unset (None) settings are left out, so a newer prism that adds an optional
    setting still recognises the checkpoints of an older run.
    """
    import hashlib

    data = resolved.to_dict()
    for table, key in FINGERPRINT_EXCLUDED:
        data.get(table, {}).pop(key, None)
    canonical = json.dumps(_without_none(data), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _without_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_none(v) for k, v in obj.items() if v is not None}
    return obj


def environment_facts(world_size: int = 1) -> dict[str, Any]:
    import torch
    import transformers

    facts = {
        "prism": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "platform": platform.platform(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cuda_devices": torch.cuda.device_count(), "world_size": world_size,
    }
    try:
        import accelerate
        import peft

        facts.update(accelerate=accelerate.__version__, peft=peft.__version__)
    except ImportError:
        pass
    return facts


def train(resolved: Any, *, restart: bool = False, reporter: Reporter | None = None) -> TrainOutcome:
    """Run (or continue) the configured task sequence and return the accuracy matrix.

    Everything that can fail on the configuration is checked before a file is touched, so
    that a run that cannot start (``--restart`` included) leaves its outputs as they were.
    """
    quiet_libraries()
    reporter = reporter or Reporter()
    # in every process, before the process group exists: the config, model and routing tower
    # (fetched from the hub if needed), trackers, precision
    check_run(resolved)
    plan = plan_run(resolved)
    cfg = plan.config
    set_seed(cfg.project.seed)
    layout = plan.layout
    fingerprint = run_fingerprint(resolved)
    method = build_method(plan)
    joint = bool(method.joint)
    deepspeed = _deepspeed_settings(resolved)
    accelerator = _accelerator(cfg, layout, unused_parameters=bool(method.unused_parameters), deepspeed=deepspeed)
    # DeepSpeed: per-task engine config, and under ZeRO-3 full weights between fits (prism.engine.zero)
    ds_run = _deepspeed_run(cfg, layout, accelerator, deepspeed) if deepspeed is not None else None
    main = accelerator.is_main_process
    if not main:
        reporter = Reporter()
    # --restart: a model that passes the checks but does not load (wrong family, broken weights) must
    # fail before the run is cleared; a plain rerun first learns from its checkpoints whether it can go on
    backbone = load_backbone(plan) if restart else None
    if main:
        root = plan.benchmark.prepare()  # the data is there (or generated) before anything is removed
        store.recover_interrupted(layout.checkpoints_dir)
        if restart:
            _clear_run(layout)
    accelerator.wait_for_everyone()
    _start_trackers(accelerator, cfg)
    if not main:
        root = plan.benchmark.prepare()  # the data rank 0 made ready
    prefix = 0 if restart else _finished_prefix(plan, fingerprint, joint=joint)
    if backbone is None:
        backbone = load_backbone(plan)
    method.attach(backbone)

    if main:
        layout.results_dir.mkdir(parents=True, exist_ok=True)
        resolved.save(layout.results_dir)
        _write_json(layout.results_dir / "run.json", {
            "fingerprint": fingerprint, "environment": environment_facts(accelerator.num_processes),
            "global_batch_size": cfg.train.global_batch_size, "tasks": [t.name for t in plan.sequence],
            "task_indices": plan.indices, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
    matrix = _load_or_new_matrix(layout, plan)
    outcome = TrainOutcome(layout=layout, matrix=matrix, summary={})

    if prefix:
        last = layout.checkpoint(plan.indices[prefix - 1])
        restore_checkpoint(method, last)
        for position in range(prefix):
            name = plan.sequence[position].name
            outcome.skipped.append(name)
            reporter.task_skipped(name, f"checkpoint {layout.checkpoint_name(plan.indices[position])} is complete")
        if main and not matrix.row_complete(prefix - 1) and cfg.train.eval_after_each_task:
            evaluate_row(plan, backbone, method, root, prefix - 1, matrix, reporter)
        accelerator.wait_for_everyone()

    step_offset = _steps_done(plan, prefix)
    last = len(plan.sequence) - 1
    # joint (the multi-task upper bound) trains once, on every task's data, as the last step
    positions = ([last] if prefix <= last else []) if joint else range(prefix, len(plan.sequence))
    for position in positions:
        spec = plan.sequence[position]
        task = TaskContext(index=position, spec=spec, sequence=plan.sequence, benchmark=cfg.benchmark.id)
        # each task draws from its own seed: a resumed run trains task k exactly like an uninterrupted one
        set_seed(cfg.project.seed + 1000 * position)
        method.begin_task(task)
        fitter = None
        steps_done = 0
        checkpointer = StepCheckpointer(
            folder=layout.step_checkpoint(plan.indices[position]), every=cfg.train.save_every_steps,
            info={"fingerprint": fingerprint, "tasks_seen": [t.name for t in plan.sequence[: position + 1]]},
            writer=accelerator.is_main_process)
        if method.trains:
            from prism.benchmarks.data import TaskDataset
            from prism.engine.fit import TaskFitter

            sources = range(len(plan.sequence)) if joint else [position]
            records = [r for p in sources for r in _training_records(plan, root, p, reporter)]
            records = method.training_records(task, records)
            dataset = TaskDataset(records, backbone=backbone, root=root,
                                  specs={t.name: t for t in plan.all_tasks}, verify_images=cfg.benchmark.verify_images)
            fitter = TaskFitter(model=backbone.model, method=method, dataset=dataset, train_cfg=cfg.train if joint else cfg.train.for_task(spec.name),
                                seed=cfg.project.seed + 1000 * position, accelerator=accelerator,
                                log_path=layout.results_dir / METRICS_FILE,
                                tasks_in_step=len(sources), step_offset=step_offset, deepspeed=ds_run)
            steps = fitter.steps()
            reporter.task_started(position, len(plan.sequence), spec.name, steps)
            result = fitter.fit(task, on_step=reporter.step, checkpointer=checkpointer)
            reporter.task_finished(spec.name, result)
            steps_done = result.steps
            step_offset += steps_done
        method.end_task(task, fitter if fitter is not None else _NoFit(backbone))
        if main:
            save_checkpoint(plan, method, backbone, position, fingerprint, steps=steps_done)
            checkpointer.clear()
        outcome.trained.append(spec.name)
        if main and cfg.train.eval_after_each_task:
            # evaluation runs on rank 0 while the other ranks wait (greedy decoding of test sets)
            evaluate_row(plan, backbone, method, root, position, matrix, reporter)
        accelerator.wait_for_everyone()

    outcome.summary = _write_summary(layout, matrix, joint=joint) if main else summarize(matrix, joint=joint)
    if ds_run is not None:
        ds_run.close()
    accelerator.end_training()
    return outcome


# -- pieces -----------------------------------------------------------------------------
def _accelerator(cfg: Any, layout: RunLayout, *, unused_parameters: bool = False, deepspeed: Any = None) -> Any:
    """accelerate's Accelerator for the run: plain/DDP, or with DeepSpeed (``deepspeed``: DeepSpeedSettings)."""
    import torch
    from accelerate import Accelerator

    from prism.backbones.precision import compute_device, mixed_precision

    mixed = mixed_precision(cfg.backbone.train_precision, compute_device())
    from accelerate.utils import DistributedDataParallelKwargs

    trackers = report_to(cfg.train.report_to)
    if deepspeed is not None:
        from prism.engine.zero import make_accelerator

        accelerator = make_accelerator(deepspeed, mixed_precision=mixed, log_with=trackers or None,
                                       project_dir=str(layout.results_dir))
    else:
        # methods with routers or per-task slots may leave trainable parameters out of a step
        ddp = DistributedDataParallelKwargs(find_unused_parameters=unused_parameters)
        accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(),
                                  log_with=trackers or None, project_dir=str(layout.results_dir),
                                  kwargs_handlers=[ddp])
    return accelerator


def _start_trackers(accelerator: Any, cfg: Any) -> None:
    """Open the trackers' logs in the results folder (after ``--restart`` cleared it, not before)."""
    if cfg.train.report_to:
        accelerator.init_trackers(cfg.project.name, config={"method": cfg.method.id, "benchmark": cfg.benchmark.id,
                                                            "seed": cfg.project.seed})


def _deepspeed_settings(resolved: Any) -> Any:
    """The run's DeepSpeed config (``[distributed] backend = "deepspeed"``), else None."""
    distributed = resolved.config.distributed
    if distributed.backend != "deepspeed":
        return None
    from prism.engine.deepspeed_config import load_deepspeed_config

    return load_deepspeed_config(distributed, resolved.project_dir, resolved.sources)


def _deepspeed_run(cfg: Any, layout: RunLayout, accelerator: Any, settings: Any) -> Any:
    from prism.backbones.precision import compute_device, mixed_precision
    from prism.engine.zero import RECORD_FILE, DeepSpeedRun

    precision = mixed_precision(cfg.backbone.train_precision, compute_device())
    # the effective config of the task being trained goes next to launch.json (rank 0 writes it)
    return DeepSpeedRun(settings, accelerator, precision=precision, record_path=layout.results_dir / RECORD_FILE)


def report_to(names: list[str]) -> list[str]:
    """``[train] report_to`` checked (``prism.config.run_checks``): known trackers whose package is installed."""
    from prism.config.run_checks import tracker_problems

    problems = tracker_problems(names)
    if problems:
        raise ConfigError("[train] report_to: " + "; ".join(problems))
    return list(names)


def _steps_done(plan: RunPlan, prefix: int) -> int:
    """Optimizer steps of the tasks already finished (they start the trackers' step axis)."""
    total = 0
    for position in range(prefix):
        folder = plan.layout.checkpoint(plan.indices[position])
        if not store.checkpoint_complete(folder):  # a joint run has only its last checkpoint
            continue
        total += int(store.read_checkpoint_info(folder).state.get("steps", 0) or 0)
    return total


class _NoFit:
    """FitHandle for methods that do not train (zeroshot)."""

    def __init__(self, backbone: Any):
        self.model = backbone.model
        self.device = next(backbone.model.parameters()).device

    def batches(self, limit=None, batch_size=None):
        return iter(())

    def forward(self, batch):
        return self.model(**batch.model_inputs())


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


def _finished_prefix(plan: RunPlan, fingerprint: str, *, joint: bool = False) -> int:
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
        if info.config_hash != fingerprint:
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


def _clear_run(layout: RunLayout) -> None:
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
        _write_json(record_path, record)


def save_checkpoint(plan: RunPlan, method: Method, backbone: Any, position: int, fingerprint: str,
                    steps: int = 0) -> Path:
    from safetensors.torch import save_file

    from prism.adapters.io import save_adapters

    folder = plan.layout.checkpoint(plan.indices[position])
    seen = plan.sequence[: position + 1]

    def fill(tmp: Path) -> None:
        adapter_meta: dict[str, Any] = {}
        if method.adapters is not None:
            adapter_meta = save_adapters(method.adapters, tmp, base_model_name_or_path=backbone.resolved_path,
                                         slots=method.adapter_slots_for_checkpoint()) or {}
        tensors = {k: v.detach().contiguous().cpu() for k, v in method.state_dict().items()}
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

    has_adapters = method.adapters is not None
    info = store.require_verified(folder, hashes=hashes, adapters=has_adapters, method=method_id,
                                  backbone=backbone_id)
    tensors = {}
    if (folder / store.STATE_TENSORS).is_file():
        tensors = load_file(str(folder / store.STATE_TENSORS))
    method.load_state(tensors, info.state.get("method_state", {}))
    if has_adapters:
        load_adapters(method.adapters, folder)
    return info.state


def model_id_for(folder: Path) -> str:
    """Identifies the checkpoint predictions were made with (hash of its manifest)."""
    manifest = folder / store.MANIFEST
    if not manifest.is_file():
        return "base"
    return store.sha256_file(manifest)[:16]


def evaluate_row(plan: RunPlan, backbone: Any, method: Method, root: Path, position: int,
                 matrix: Any, reporter: Reporter) -> dict[str, Any]:
    """Evaluate every task seen up to ``position`` and fill that row of the matrix."""
    from prism.benchmarks.data import load_test_records
    from prism.engine.scoring import score_task
    from prism.inference.generate import predict_task

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
        predictions = predict_task(
            backbone=backbone, method=method, spec=spec, root=root, records=records,
            out_path=layout.prediction_file(plan.indices[position], spec.name), model_id=model_id,
            batch_size=cfg.infer.batch_size, max_new_tokens=cfg.infer.max_new_tokens or spec.max_new_tokens,
            num_beams=cfg.infer.num_beams, temperature=cfg.infer.temperature,
            on_batch=reporter.eval_progress, num_workers=cfg.train.num_workers, verify_images=cfg.benchmark.verify_images)
        result = score_task(spec, root, predictions, plan.resolved.project_dir)
        matrix.set(position, i, result.score)
        details[spec.name] = result.to_dict()
        reporter.eval_finished(learned.name, spec.name, result.score)
    _write_json(layout.results_dir / "scores" / f"{layout.checkpoint_name(plan.indices[position])}.json",
                {"learned": learned.name, "position": position, "model_id": model_id, "tasks": details})
    matrix.save(layout.results_dir / MATRIX_FILE)
    return details


def _load_or_new_matrix(layout: RunLayout, plan: RunPlan) -> Any:
    from prism.evaluation.matrix import AccuracyMatrix

    names = [t.name for t in plan.sequence]
    path = layout.results_dir / MATRIX_FILE
    if path.is_file():
        existing = AccuracyMatrix.load(path)
        if list(existing.task_names) == names:
            return existing
    return AccuracyMatrix(names)


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


def _write_summary(layout: RunLayout, matrix: Any, *, joint: bool = False) -> dict[str, Any]:
    summary = summarize(matrix, joint=joint)
    _write_json(layout.results_dir / CL_METRICS_FILE, summary)
    return summary


def _write_json(path: Path, obj: Any) -> None:
    store.write_json_atomic(path, obj)
