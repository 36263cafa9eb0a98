"""Build what a run needs from the resolved config: benchmark, backbone, method, layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism.benchmarks.base import Benchmark, TaskSpec
from prism.checkpoint.layout import RunLayout
from prism.methods.base import Method, RunInfo
from prism.plugins import registry


@dataclass
class RunPlan:
    """The task sequence and where its files go — no model loaded yet."""

    resolved: Any  # prism.config.ResolvedConfig
    benchmark: Benchmark
    all_tasks: list[TaskSpec]
    indices: list[int]  # benchmark indices of the run's tasks, in order
    layout: RunLayout

    @property
    def sequence(self) -> list[TaskSpec]:
        return [self.all_tasks[i] for i in self.indices]

    @property
    def config(self) -> Any:
        return self.resolved.config


def plan_run(resolved: Any) -> RunPlan:
    from prism.config import task_selection
    from prism.config.problems import config_error
    from prism.config.run_checks import task_name_problems

    cfg = resolved.config
    project_dir: Path = resolved.project_dir
    benchmark_cls = registry("benchmark", project_dir).load(cfg.benchmark.id)
    benchmark = benchmark_cls(cfg.benchmark, project_dir)
    tasks = benchmark.task_specs()
    names = [t.name for t in tasks]
    problems = task_name_problems(cfg.benchmark.id, cfg.benchmark.tasks, cfg.train.overrides, names,
                                  resolved.where)
    if problems:
        raise config_error(problems)
    indices = task_selection(cfg.benchmark.tasks, names)
    layout = RunLayout(resolved.output_dir, cfg.benchmark.id, cfg.method.id, cfg.backbone.id)
    return RunPlan(resolved=resolved, benchmark=benchmark, all_tasks=tasks, indices=indices, layout=layout)


def check_run(resolved: Any) -> None:
    """Everything ``prism train`` can check before it touches a file: the run checks with hub
    ids fetched (``prism.config.run_checks``) and whether this machine can train at the chosen
    precision. Runs before a relaunch under torchrun, and again first thing in every process."""
    from prism.backbones.precision import check_precision, compute_device
    from prism.config.run_checks import validate_run

    validate_run(resolved, fetch=True)
    mode, key = precision_for(resolved, "train")
    check_precision(mode, compute_device(), key)


def check_before_launch(resolved: Any) -> None:
    """``check_run`` plus the benchmark's data (generated if it is generated): what the launcher
    checks before torchrun starts, so that a run that cannot start leaves no launch record."""
    check_run(resolved)
    plan_run(resolved).benchmark.prepare()


def build_method(plan: RunPlan) -> Method:
    cfg = plan.config
    method_cls = registry("method", plan.resolved.project_dir).load(cfg.method.id)
    run = RunInfo(num_tasks=len(plan.indices), task_names=[t.name for t in plan.sequence],
                  seed=cfg.project.seed)
    return method_cls(plan.resolved.method_params, run)


def load_backbone(plan: RunPlan, device: Any = None, *, purpose: str = "train") -> Any:
    """The backbone at the precision of ``purpose``: "train" ([backbone] train_precision) or
    "infer" ([infer] precision). The precision is checked before anything loads.

    ``device`` None: training loads on the CPU (accelerate moves the model; quantised
    models load straight onto their GPU), inference on this process's GPU when there is one.
    """
    from prism.backbones.precision import check_precision, compute_device, load_device

    cfg = plan.config
    mode, key = precision_for(plan.resolved, purpose)
    check_precision(mode, compute_device(), key)
    if device is None:
        device = compute_device() if purpose == "infer" else load_device(mode)
    project_dir = plan.resolved.project_dir
    # paths in prism.toml are relative to its folder; every backbone reads train_precision,
    # so the mode travels in the config (plugins included)
    backbone_cfg = cfg.backbone.model_copy(update={
        "model": _project_path(cfg.backbone.model, project_dir),
        "vision_tower": _project_path(cfg.backbone.vision_tower, project_dir),
        "train_precision": mode})
    backbone_cls = registry("backbone", plan.resolved.project_dir).load(cfg.backbone.id)
    loaded = backbone_cls().load(backbone_cfg, device=device)
    loaded.extra["precision"] = mode
    loaded.extra["routing_tower"] = _project_path(backbone_cfg.routing_tower, project_dir)
    return loaded


def precision_for(resolved: Any, purpose: str) -> tuple[str, str]:
    """(mode, the key or flag that chose it) for loading the model to "train" or to "infer"."""
    from prism.backbones.precision import resolve_infer_precision

    cfg = resolved.config
    train_key = _setting_name(resolved, "backbone.train_precision", "[backbone] train_precision")
    if purpose == "train":
        return cfg.backbone.train_precision, train_key
    if purpose != "infer":
        raise ValueError(f"purpose must be 'train' or 'infer', got {purpose!r}")
    mode = resolve_infer_precision(cfg.infer.precision, cfg.backbone.train_precision)
    if cfg.infer.precision == "auto":
        return mode, f'{train_key} (used because [infer] precision = "auto")'
    return mode, _setting_name(resolved, "infer.precision", "[infer] precision")


def _setting_name(resolved: Any, dotted: str, toml_key: str) -> str:
    """The flag when a dedicated flag set the value (``--train-precision``), else the TOML key."""
    label = getattr(resolved, "sources", {}).get(dotted, "")
    return label if label.startswith("--") and label != "--set" else toml_key


def _project_path(value: str | None, project_dir: Path) -> str | None:
    """A relative local path in prism.toml is relative to its folder; ids and builtins pass through."""
    from prism.config.paths import project_path

    return project_path(value, project_dir)


def quiet_libraries() -> None:
    """Loading prints progress bars and deprecation warnings; a CLI should not."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers always present in a run
        pass
